"""Updates across ranks: two gloo processes take the step one process takes (DDP, and FSDP with
its gathered weight sync and checkpoint); `agentrl train` under torchrun writes its run directory
once, resumes, and refuses a world size that cannot share the groups in one line."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from agentrl.config import ConfigError, load_config
from agentrl.generation import sync_weights
from agentrl.models import inference_state_dict, load_model
from agentrl.models.sharding import full_optimizer_state
from agentrl.training import RLTrainer
from agentrl.training.distributed import Ranks, check_world_size, global_positions
from agentrl.types import Trajectory
from tests.scale.test_generation_backends import OwnCopyGenerator

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]

#: Group sizes of the synthetic batch, and which rank holds each group: rank 0 holds 8
#: trajectories (4 micro-batches of 2), rank 1 holds 3 (2 micro-batches), one of them with
#: advantage 0 everywhere (skipped by the update).
GROUP_SIZES = (3, 3, 2, 3)
GROUP_RANK = (0, 1, 0, 0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GatheringCopy(OwnCopyGenerator):
    """A sampler over its own copy of the policy that syncs as the vLLM backend does: through
    `inference_state_dict`, which gathers the whole weights of a sharded policy."""

    def sync_weights(self, model: torch.nn.Module) -> None:  # noqa: D102 - the protocol's method
        self.model.load_state_dict(inference_state_dict(model))
        self.syncs += 1


def _config(tmp_path: Path, agg: str, parallel: str = "ddp"):
    return load_config(None, [f"train.parallel={parallel}",
        f"run.out_dir={tmp_path}", "run.seed=5", f"algorithm.agg={agg}",
        "train.micro_batch_size=2", "train.mini_batches=2", "train.ppo_epochs=2", "train.lr=1e-2",
        "train.warmup_steps=0", "rollout.tasks_per_iteration=4",
    ])


def _batch(vocab: int) -> tuple[list[Trajectory], list]:
    """Trajectories of 4 groups (a shared prompt per group, sampled tokens after it), with
    behaviour log-probs off the policy's (ratios away from 1, some clipped) and per-token
    advantages; the second trajectory of group 1 has advantage 0 everywhere."""
    import numpy as np

    rng = random.Random(11)
    trajectories, advantages = [], []
    for group_id, size in enumerate(GROUP_SIZES):
        prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(4, 7))]
        for k in range(size):
            actions = [rng.randrange(3, vocab) for _ in range(rng.randint(2, 9))]
            ids = prompt + actions
            mask = [0] * len(prompt) + [1] * len(actions)
            old = [0.0] * len(prompt) + [-rng.uniform(4.0, 7.0) for _ in actions]
            zero = group_id == 1 and k == 1
            adv = np.array([0.0] * len(prompt) + [0.0 if zero else rng.uniform(-1.5, 1.5) for _ in actions])
            trajectories.append(Trajectory(token_ids=ids, loss_mask=mask, logprobs=old,
                                           prompt_len=len(prompt), group_id=group_id))
            advantages.append(adv)
    return trajectories, advantages


def _shard(rank: int, trajectories, advantages):
    """Rank `rank`'s trajectories and their places in the whole batch."""
    mine = [(g, n) for g, n in enumerate(GROUP_SIZES) if GROUP_RANK[g] == rank]
    every = list(enumerate(GROUP_SIZES))
    positions = global_positions(mine, every)
    return [trajectories[p] for p in positions], [advantages[p] for p in positions], positions


def _update(tmp_path: Path, model_dir: Path, agg: str, rank: int | None) -> torch.Tensor:
    """The weights after one `_update` of the synthetic batch: all of it (rank None), or rank
    `rank`'s share inside a process group."""
    torch.manual_seed(0)
    model, tokenizer = load_model(model_dir)
    trainer = RLTrainer(_config(tmp_path, agg), tmp_path / f"run_{rank}", model, tokenizer, lambda: None)
    return _update_batch(trainer, tokenizer, rank)


def _update_batch(trainer: RLTrainer, tokenizer, rank: int | None) -> tuple[torch.Tensor, dict]:
    """`trainer`'s weights and metrics after one `_update` of the synthetic batch (or of rank
    `rank`'s share of it)."""
    model = trainer.model
    trajectories, advantages = _batch(len(tokenizer))
    if rank is None:
        metrics = trainer._update(trajectories, advantages)
    else:
        trajs, advs, positions = _shard(rank, trajectories, advantages)
        metrics = trainer._update(trajs, advs, positions, len(trajectories))
    assert metrics["policy/optimizer_steps"] == 4.0
    return torch.cat([p.detach().flatten() for p in model.parameters()]), metrics


def _rank_worker(rank: int, world_size: int, port: int, tmp_path: Path, model_dir: Path, agg: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        weights, metrics = _update(tmp_path, model_dir, agg, rank)
        torch.save({"weights": weights, "metrics": metrics}, tmp_path / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_two_ranks_take_the_step_of_one_process(tmp_path, tiny_model_dir, agg):
    single, single_metrics = _update(tmp_path, tiny_model_dir, agg, None)
    mp.spawn(_rank_worker, args=(2, _free_port(), tmp_path, tiny_model_dir, agg), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    start, _ = load_model(tiny_model_dir)
    before = torch.cat([p.detach().flatten() for p in start.parameters()])
    assert not torch.allclose(single, before, atol=1e-4)  # the update moved the weights
    assert torch.equal(ranks[0]["weights"], ranks[1]["weights"])  # ranks stay identical
    # Equal up to float rounding (the ranks add their gradients in another order; Adam's
    # normalisation magnifies rounding where a gradient is near 0). A missed denominator or a
    # gradient halved by DDP's mean would move weights by ~lr (1e-2) and change the grad norm.
    torch.testing.assert_close(ranks[0]["weights"], single, atol=2e-5, rtol=1e-4)
    # The logged figures are those of the whole batch, on every rank.
    for key in ("loss/policy", "policy/clipfrac", "policy/grad_norm", "perf/skipped_sequences"):
        for rank in ranks:
            assert rank["metrics"][key] == pytest.approx(single_metrics[key], rel=1e-4, abs=1e-6), key
    assert single_metrics["perf/skipped_sequences"] == pytest.approx(1 / 11)


def _moments(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """Adam's moments of every parameter, whole (gathered from the shards), in name order."""
    state = full_optimizer_state(model, optimizer)["state"]
    return torch.cat([state[name][moment].flatten() for name in sorted(state)
                      for moment in ("exp_avg", "exp_avg_sq")])


def _fsdp_worker(rank: int, world_size: int, port: int, tmp_path: Path, model_dir: Path, agg: str) -> None:
    """Rank `rank` of an FSDP run: the update of its share, the generator's weight sync, a
    checkpoint, and a second trainer that resumes from it."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        config = _config(tmp_path, agg, parallel="fsdp")
        torch.manual_seed(0)
        model, tokenizer = load_model(model_dir)
        generator = GatheringCopy(model, tokenizer)
        trainer = RLTrainer(config, tmp_path / "fsdp_run", model, tokenizer, lambda: None, generator=generator)
        shards = sum(p.to_local().numel() for p in model.parameters())  # (DTensors: this rank's slices)
        _, metrics = _update_batch(trainer, tokenizer, rank)
        sync_weights(generator, model)  # gathers the whole weights on every rank
        synced = torch.cat([p.detach().flatten() for p in generator.model.parameters()])
        trainer.iteration = 1
        path = trainer.save()  # every rank gathers, rank 0 writes
        moments = _moments(model, trainer.optimizer)

        # A second run of the same recipe resumes from that checkpoint on both ranks.
        fresh, _ = load_model(model_dir)
        resumed = RLTrainer(config, tmp_path / "fsdp_run", fresh, tokenizer, lambda: None,
                            generator=GatheringCopy(fresh, tokenizer))
        assert resumed.resume() and resumed.iteration == 1
        torch.save({"weights": synced, "metrics": metrics, "path": path, "shards": shards,
                    "resumed_generator": torch.cat([p.detach().flatten()
                                                    for p in resumed.generator.model.parameters()]),
                    "moments": moments, "resumed_moments": _moments(fresh, resumed.optimizer)},
                   tmp_path / f"fsdp_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_two_fsdp_ranks_take_the_step_of_one_process(tmp_path, tiny_model_dir, agg):
    """Sharded weights, gradients and optimizer state; rank 0 runs 4 micro-batches per
    mini-batch and rank 1 two, so rank 1 pads with passes that add nothing."""
    single, single_metrics = _update(tmp_path, tiny_model_dir, agg, None)
    mp.spawn(_fsdp_worker, args=(2, _free_port(), tmp_path, tiny_model_dir, agg), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"fsdp_rank{r}.pt", weights_only=False) for r in range(2)]
    start, _ = load_model(tiny_model_dir)
    total = sum(p.numel() for p in start.parameters())
    assert all(rank["shards"] < total for rank in ranks)  # each rank held a slice, not the whole
    assert sum(rank["shards"] for rank in ranks) >= total
    # The generator of every rank got the whole updated weights, those of one process up to
    # float rounding: each pass's gradient is reduced on its own, in another order than one
    # process adds them, and Adam magnifies that where a gradient is near 0 (a handful of the
    # 93k weights differ by up to ~1e-4, while a step moves them by ~lr, 1e-2). A wrong
    # denominator or loss scale would also change the grad norm checked below.
    assert torch.equal(ranks[0]["weights"], ranks[1]["weights"])
    torch.testing.assert_close(ranks[0]["weights"], single, atol=3e-4, rtol=1e-4)
    assert ((ranks[0]["weights"] - single).abs() > 2e-5).float().mean() < 1e-3
    for key in ("loss/policy", "policy/clipfrac", "policy/grad_norm", "perf/skipped_sequences"):
        for rank in ranks:
            assert rank["metrics"][key] == pytest.approx(single_metrics[key], rel=1e-4, abs=1e-6), key
    # Rank 0 wrote the whole weights in Hugging Face format, loadable without FSDP.
    saved, _ = load_model(ranks[0]["path"])
    torch.testing.assert_close(torch.cat([p.detach().flatten() for p in saved.parameters()]), ranks[0]["weights"])
    # Resuming restores the weights (into the shards and the generator) and Adam's moments.
    for rank in ranks:
        torch.testing.assert_close(rank["resumed_generator"], rank["weights"])
        assert rank["moments"].abs().sum() > 0
        torch.testing.assert_close(rank["resumed_moments"], rank["moments"])


def _fsdp_loop_worker(rank: int, world_size: int, port: int, tmp_path: Path, model_dir: Path) -> None:
    """Rank `rank` of a 2-iteration FSDP training loop that samples from its own synced copy."""
    from tests.foundation.test_training import Lowercase, _config as loop_config

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        config = loop_config(tmp_path, "loop", **{"train.parallel": "fsdp", "train.iterations": 2, "train.lr": 1e-2,
                                                  "rollout.group_size": 4, "train.micro_batch_size": 2})
        torch.manual_seed(rank)  # the ranks sample different rollouts
        model, tokenizer = load_model(model_dir)
        generator = GatheringCopy(model, tokenizer)
        RLTrainer(config, tmp_path / "loop", model, tokenizer, Lowercase, generator=generator).train()
        weights = torch.cat([p.detach().flatten() for p in generator.model.parameters()])
        torch.save({"syncs": generator.syncs, "weights": weights}, tmp_path / f"loop_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_an_fsdp_training_loop_syncs_its_generators_and_checkpoints_whole_weights(tmp_path, tiny_model_dir):
    mp.spawn(_fsdp_loop_worker, args=(2, _free_port(), tmp_path, tiny_model_dir), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"loop_rank{r}.pt") for r in range(2)]
    assert [rank["syncs"] for rank in ranks] == [2, 2]  # once after each iteration's update
    assert torch.equal(ranks[0]["weights"], ranks[1]["weights"])
    start, _ = load_model(tiny_model_dir)
    assert not torch.allclose(ranks[0]["weights"], torch.cat([p.detach().flatten() for p in start.parameters()]))
    run = tmp_path / "loop"
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    saved, _ = load_model(run / "checkpoints" / "iter_000002")
    assert torch.equal(torch.cat([p.detach().flatten() for p in saved.parameters()]), ranks[0]["weights"])


def test_a_rank_takes_a_contiguous_block_of_the_tasks():
    blocks = [list(Ranks(rank, 3).share(8)) for rank in range(3)]
    assert blocks == [[0, 1, 2], [3, 4, 5], [6, 7]]
    # Trajectories of groups in id order, whichever rank holds them and in what order.
    assert global_positions([(7, 2), (2, 1)], [(2, 1), (5, 3), (7, 2)]) == [4, 5, 0]


def _torchrun(tmp_path: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([*TORCHRUN, "--nproc-per-node", "2", "--master-port", str(_free_port()),
                           "-m", "agentrl.cli", *args], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=timeout)


def _train(tmp_path: Path, model_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("run: {name: ranks}\nenv: {id: agentrl/Arithmetic-v0}\n")
    return _torchrun(tmp_path, "train", str(recipe), f"run.out_dir={tmp_path}", f"model.path={model_dir}",
                     "sft.demos=0", "eval.tasks=2", "rollout.tasks_per_iteration=4", "rollout.group_size=2",
                     "rollout.max_new_tokens=4", "train.log_trajectories=2", *extra)


def test_a_two_rank_run_writes_its_directory_once_and_resumes(tmp_path, tiny_model_dir):
    first = _train(tmp_path, tiny_model_dir, "train.iterations=2")
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "ranks"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_000000", "iter_000002"]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]  # one line per iteration, not one per rank
    # The metrics are the whole iteration's: 4 tasks x 2 rollouts, over both ranks.
    assert all(line["rollout/groups"] == 4 and line["rollout/trajectories"] == 8 for line in lines)
    assert len(list((run / "tensorboard").iterdir())) == 1
    logged = [json.loads(line) for line in (run / "trajectories.jsonl").read_text().splitlines()]
    assert [t["iteration"] for t in logged] == [1, 1, 2, 2]
    assert first.stdout.count("Run directory:") == 1  # rank 1 prints nothing

    resumed = _train(tmp_path, tiny_model_dir, "train.iterations=3", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming RL from iteration 2" in resumed.stdout
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    state = json.loads((run / "checkpoints" / "iter_000003" / "trainer_state.json").read_text())
    assert state["next_task"] == 12  # every rank advanced the task counter by the global count


def test_a_world_size_that_does_not_divide_the_groups_is_one_line(tmp_path, tiny_model_dir):
    result = _train(tmp_path, tiny_model_dir, "rollout.tasks_per_iteration=3", "train.iterations=1")
    assert result.returncode != 0
    errors = {line for line in result.stderr.splitlines() if line.startswith("error:")}
    assert len(errors) == 1, result.stderr[-3000:]  # the same one line from each rank
    (line,) = errors
    assert "rollout.tasks_per_iteration=3 does not divide among 2 ranks" in line
    assert "multiple of 2" in line and "--nproc-per-node 1" in line
    assert not (tmp_path / "ranks").exists()  # refused before anything was written


def test_the_world_size_check_names_the_fix():
    config = load_config(None, ["rollout.tasks_per_iteration=6"])
    check_world_size(config, 3)
    with pytest.raises(ConfigError, match="multiple of 4 or run torchrun --nproc-per-node 3"):
        check_world_size(config, 4)


def test_fsdp_with_the_hf_generator_is_refused_in_one_line_rather_than_run_as_ddp():
    config = load_config(None, ["train.parallel=fsdp", "generation.backend=hf"])
    check_world_size(config, 1)  # one process ignores train.parallel
    with pytest.raises(ConfigError) as refused:
        check_world_size(config, 2)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("train.parallel=fsdp cannot run here: the hf generator samples from the very "
                              "weights FSDP shards")
    assert "use generation.backend=vllm" in message and "use train.parallel=ddp" in message
    # A generator with its own copy of the weights (vLLM, or one handed to the trainer) may.
    check_world_size(config, 2, generator_holds_weights=True)
    check_world_size(load_config(None, ["train.parallel=fsdp", "generation.backend=vllm"]), 2)
    lora = load_config(None, ["train.parallel=fsdp", "generation.backend=vllm", "model.lora.r=4"])
    with pytest.raises(ConfigError, match="LoRA adapters .* use train.parallel=ddp"):
        check_world_size(lora, 2)
