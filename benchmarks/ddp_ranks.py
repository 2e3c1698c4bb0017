"""One RL update on 1 rank against 2 ranks under torchrun (DDP over gloo), on the same batch.

Every arm runs `RLTrainer._update` on one rollout batch of the demo recipe (the default
`Config()`: tiny Qwen2, hidden 256, 4 layers, vocab 512, `agentrl/ArithmeticTryAgain-v0`) with
`--tasks` tasks x 8 rollouts (default 8 x 8 = 64 trajectories, one micro-batch of 64 on one
rank, 32 on each of two), each launched with torchrun as a user launches a run:

- `1 rank, 1 thread`: `torchrun --nproc-per-node 1`, the whole batch in one process;
- `1 rank, 2 threads`: the same with two torch threads (the same cores as two ranks);
- `2 ranks, 1 thread each`: `torchrun --nproc-per-node 2`; each rank takes half of the groups
  (whole groups, as `train_iteration` shards them), the loss denominators are all-reduced and
  DDP sums the gradients once per optimizer step.

The arms take the same optimizer steps (the 2-rank update equals the 1-rank one up to float
rounding, tests/scale/test_distributed.py): the first update's gradient norm of each arm is
recorded as a check. Each launch loads the policy, runs `--warmup` untimed updates and
`--updates` timed ones; the arms' launches alternate (A B C A B C ...) for `--rounds` rounds, so
load from other processes hits them alike; the table shows medians over all timed updates.
Before each timed update the ranks meet at a barrier, so an update's seconds are those of the
slower rank. Also timed, on rank 0: the collectives inside the update (the gradient all-reduce
through DDP, the all-reduced denominators, the gathered metrics), which include the time rank 0
waits there for the other rank to finish its share.

On a machine with fewer cores than ranks x threads the ranks share cores: the figures then
show the cost of the collectives, not a speed-up.

    python benchmarks/ddp_ranks.py [--rounds 3] [--updates 2] [--out runs/bench/ddp_ranks.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: (name, processes, torch threads per process)
ARMS = (("1 rank, 1 thread", 1, 1), ("1 rank, 2 threads", 1, 2), ("2 ranks, 1 thread each", 2, 1))


# --- one launch (every rank runs this) -----------------------------------------------------------


def bench_config(tasks: int) -> Any:
    """The demo recipe with `tasks` tasks per iteration (the same in the driver and every rank)."""
    from agentrl.config import Config

    return Config.model_validate({"rollout": {"tasks_per_iteration": tasks}})


def rank_main(work: Path, out: Path, threads: int, warmup: int, updates: int, tasks: int) -> None:
    """Time `warmup + updates` updates of the saved batch on this rank's share of its groups."""
    import torch

    import agentrl.training.rl as rl_module
    from agentrl.models import load_model
    from agentrl.training.distributed import barrier, global_positions, process_group
    from agentrl.training.rl import RLTrainer
    from agentrl.training.run import env_factory

    torch.set_num_threads(threads)
    config = bench_config(tasks)
    trajs, advantages = pickle.loads((work / "batch.pkl").read_bytes())
    collective_s = [0.0]

    def timed(fn):
        def wrapped(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                collective_s[0] += time.perf_counter() - started
        return wrapped

    with process_group(config) as ranks:
        torch.manual_seed(config.run.seed)
        model, tokenizer = load_model(work / "policy")
        trainer = RLTrainer(config, work / f"run_{ranks.world_size}_{ranks.rank}", model, tokenizer,
                            env_factory(config))
        # This rank's whole groups, as train_iteration shards the tasks.
        sizes: dict[int, int] = {}
        for t in trajs:
            sizes[t.group_id] = sizes.get(t.group_id, 0) + 1
        group_ids = sorted(sizes)
        mine = [(group_ids[i], sizes[group_ids[i]]) for i in ranks.share(len(group_ids))]
        positions = global_positions(mine, list(sizes.items()))
        my_trajs, my_advs = [trajs[p] for p in positions], [advantages[p] for p in positions]
        # The collectives the update calls (names looked up in the trainer's module).
        trainer.gradient_sync.synchronise = timed(trainer.gradient_sync.synchronise)
        rl_module.all_reduce_sum = timed(rl_module.all_reduce_sum)
        rl_module.all_gather_objects = timed(rl_module.all_gather_objects)
        seconds, collectives, grad_norms = [], [], []
        try:
            for i in range(warmup + updates):
                barrier()
                collective_s[0] = 0.0
                started = time.perf_counter()
                metrics = trainer._update(my_trajs, my_advs, positions, len(trajs))
                barrier()  # the update is done when the slower rank is done
                elapsed = time.perf_counter() - started
                grad_norms.append(metrics["policy/grad_norm"])
                if i >= warmup:
                    seconds.append(elapsed)
                    collectives.append(collective_s[0])
        finally:
            trainer.engine.close()
            trainer.logger.close()
        if ranks.is_main:
            out.write_text(json.dumps({"update_s": seconds, "collective_s": collectives,
                                       "grad_norms": grad_norms, "rank0_trajectories": len(my_trajs),
                                       "world_size": ranks.world_size, "threads": torch.get_num_threads()}))


# --- the driver ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(work: Path, out: Path, processes: int, threads: int, warmup: int, updates: int,
           tasks: int) -> dict[str, Any]:
    """One torchrun launch of `rank_main`; its rank 0's figures."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
               "--master-port", str(_free_port()), __file__, "--rank-main", str(work), "--rank-out", str(out),
               "--threads", str(threads), "--warmup", str(warmup), "--updates", str(updates),
               "--tasks", str(tasks)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun --nproc-per-node {processes} failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def prepare(work: Path, sft_demos: int, tasks: int) -> dict[str, Any]:
    """The policy (short SFT warm-up) and one rollout batch with random 0/1-reward advantages,
    saved for the launches."""
    import torch
    from rich.console import Console
    from rl_update_overhead import build_policy, random_advantages, rollout_batch

    console = Console()
    config = bench_config(tasks)
    torch.manual_seed(config.run.seed)
    random.seed(config.run.seed)
    model, tokenizer = build_policy(config, work, sft_demos=sft_demos, sft_epochs=1, console=console)
    trajs = rollout_batch(config, model, tokenizer)
    advantages = random_advantages(trajs, config.run.seed)
    model.save_pretrained(work / "policy")
    tokenizer.save_pretrained(work / "policy")
    (work / "batch.pkl").write_bytes(pickle.dumps((trajs, advantages)))
    return {"trajectories": len(trajs), "groups": len({t.group_id for t in trajs}),
            "tokens": sum(len(t.token_ids) for t in trajs),
            "parameters": sum(p.numel() for p in model.parameters())}


def run_benchmark(*, rounds: int, updates: int, warmup: int, sft_demos: int, tasks: int) -> dict[str, Any]:
    from _common import machine

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = prepare(work, sft_demos, tasks)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in ARMS}
        load_before = os.getloadavg()
        for round_ in range(rounds):
            for name, processes, threads in ARMS:
                result = launch(work, work / f"out_{processes}_{threads}_{round_}.json", processes, threads,
                                warmup, updates, tasks)
                runs[name].append(result)
                print(f"round {round_ + 1}/{rounds} {name}: "
                      + ", ".join(f"{s:.2f} s" for s in result["update_s"]), flush=True)
        load_after = os.getloadavg()
    arms = {}
    for name, processes, threads in ARMS:
        seconds = [s for r in runs[name] for s in r["update_s"]]
        collectives = [s for r in runs[name] for s in r["collective_s"]]
        arms[name] = {"processes": processes, "threads_per_process": threads,
                      "update_s": seconds, "update_s_median": statistics.median(seconds),
                      "collective_s": collectives, "collective_s_median": statistics.median(collectives),
                      "rank0_trajectories": runs[name][0]["rank0_trajectories"],
                      # Every launch starts from the same weights: the first update is the same step.
                      "first_update_grad_norm": runs[name][0]["grad_norms"][0]}
    return {"benchmark": "ddp_ranks", "recipe": f"Config() defaults (demo), rollout.tasks_per_iteration={tasks}",
            "backend": "gloo",
            "data": data, "rounds": rounds, "updates_per_launch": updates, "warmup_per_launch": warmup,
            "sft_demos": sft_demos, "cores": os.cpu_count(), "machine": machine(),
            "load_average_1_5_15": {"before": list(load_before), "after": list(load_after)}, "arms": arms}


def results_table(result: dict[str, Any]) -> str:
    base = result["arms"]["1 rank, 1 thread"]["update_s_median"]
    lines = ["| arm | trajectories on rank 0 | update (median) | vs 1 rank, 1 thread | collectives on rank 0 "
             "(median, waiting included) | first update's grad norm |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, arm in result["arms"].items():
        lines.append(f"| {name} | {arm['rank0_trajectories']} | {arm['update_s_median']:.2f} s "
                     f"| {arm['update_s_median'] / base:.2f}x | {arm['collective_s_median']:.3f} s "
                     f"| {arm['first_update_grad_norm']:.6f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="launches per arm, alternating")
    parser.add_argument("--updates", type=int, default=2, help="timed updates per launch")
    parser.add_argument("--warmup", type=int, default=1, help="untimed updates per launch first")
    parser.add_argument("--sft-demos", type=int, default=64)
    parser.add_argument("--tasks", type=int, default=8, help="tasks of the batch (8 rollouts each)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/ddp_ranks.json"))
    # Internal: what torchrun starts on every rank.
    parser.add_argument("--rank-main", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rank-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_main is not None:
        rank_main(args.rank_main, args.rank_out, args.threads, args.warmup, args.updates, args.tasks)
        return
    from _common import write_result

    result = run_benchmark(rounds=args.rounds, updates=args.updates, warmup=args.warmup,
                           sft_demos=args.sft_demos, tasks=args.tasks)
    write_result(result, results_table(result), args.out)


if __name__ == "__main__":
    main()
