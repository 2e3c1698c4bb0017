"""Checkpoints survive a kill at any moment: a real training process is killed with SIGKILL at
chosen points, `resume()` then finishes the run, and nothing is lost or written twice, neither
in metrics.jsonl and trajectories.jsonl nor in TensorBoard's event files.

The killed run is this file run as a script (`python test_checkpoint.py RUN_DIR MODEL_DIR POINT
ITERATION`): it trains and kills itself at POINT during ITERATION.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agentrl.config import load_config
from agentrl.envs import TextEnv, make_info
from agentrl.models import load_model
from agentrl.training import RLTrainer, latest_checkpoint, list_checkpoints, read_metrics, save_checkpoint

ITERATIONS = 4


class Lowercase(TextEnv):
    """The reward is the share of lowercase letters written: varied, so every update moves."""

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return "Write some letters.", make_info(anchor="start")

    def step(self, action):
        share = sum(c.islower() for c in action) / max(1, len(action))
        return "", share, True, False, make_info(anchor="start", success=share == 1.0)


def _trainer(run_dir: Path, model_dir: Path) -> RLTrainer:
    config = load_config(None, [
        f"run.out_dir={run_dir.parent}", f"run.name={run_dir.name}", "run.seed=3",
        "rollout.group_size=4", "rollout.tasks_per_iteration=2", "rollout.max_new_tokens=3",
        "train.micro_batch_size=8", "train.warmup_steps=0", "train.lr=1e-3",
        f"train.iterations={ITERATIONS}", "train.checkpoint_every=1", "train.keep_checkpoints=2",
        "train.log_trajectories=2",
    ])
    model, tokenizer = load_model(model_dir)
    return RLTrainer(config, run_dir, model, tokenizer, Lowercase)


def _weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _trajectory_iterations(run_dir: Path) -> list[int]:
    lines = (run_dir / "trajectories.jsonl").read_text().splitlines()
    return [json.loads(line)["iteration"] for line in lines]


def _tensorboard_steps(run_dir: Path, tag: str) -> list[int]:
    """The steps at which TensorBoard shows `tag`, over every event file of the run, sorted
    (a duplicate still shows). The reader takes event files in name order, and two files begun
    in the same second are ordered by the writer's pid, not by time."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return sorted(scalar.step for scalar in events.Scalars(tag))


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_model_dir):
    """An uninterrupted run: the weights and rewards every interrupted run must end with."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    trainer = _trainer(run_dir, tiny_model_dir)
    trainer.train()
    rewards = [line["reward/mean"] for line in read_metrics(run_dir)]
    return _weights(trainer.model), rewards


def _assert_finished_like(run_dir: Path, trainer: RLTrainer, straight) -> None:
    weights, rewards = straight
    metrics = read_metrics(run_dir)
    assert [line["step"] for line in metrics] == list(range(1, ITERATIONS + 1))
    assert [line["reward/mean"] for line in metrics] == pytest.approx(rewards, abs=1e-6)
    assert _trajectory_iterations(run_dir) == [i for i in range(1, ITERATIONS + 1) for _ in range(2)]
    assert _tensorboard_steps(run_dir, "reward/mean") == list(range(1, ITERATIONS + 1))
    assert torch.allclose(_weights(trainer.model), weights, atol=1e-6)


@pytest.mark.parametrize("point, iteration", [
    ("after_lines", 1),          # before any checkpoint of this run exists
    ("after_lines", 3),          # between the metrics lines and the checkpoint's rename
    ("writing_checkpoint", 3),   # weights written, trainer state not yet
    ("deleting_checkpoint", 3),  # an old checkpoint half deleted
])
def test_a_run_killed_at_any_point_resumes_to_the_uninterrupted_result(
        tmp_path, tiny_model_dir, straight, point, iteration):
    run_dir = tmp_path / "run"
    killed = subprocess.run([sys.executable, __file__, str(run_dir), str(tiny_model_dir), point,
                             str(iteration)], capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]

    # Nothing named like a checkpoint lacks a part of one.
    for directory in (run_dir / "checkpoints").glob("iter_*"):
        assert {"model.safetensors", "trainer.pt", "trainer_state.json"} <= {
            p.name for p in directory.iterdir()}, directory

    resumed = _trainer(run_dir, tiny_model_dir)
    assert resumed.resume()
    resumed.train()
    _assert_finished_like(run_dir, resumed, straight)


def test_ctrl_c_after_the_lines_of_an_iteration_writes_them_once(tmp_path, tiny_model_dir, straight):
    run_dir = tmp_path / "run"
    interrupted = _trainer(run_dir, tiny_model_dir)
    write_lines = interrupted._log_trajectories

    def write_then_ctrl_c(*args):
        write_lines(*args)
        if interrupted.iteration + 1 == 3:
            raise KeyboardInterrupt

    interrupted._log_trajectories = write_then_ctrl_c
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()

    resumed = _trainer(run_dir, tiny_model_dir)
    assert resumed.resume() and resumed.iteration == 2
    resumed.train()
    _assert_finished_like(run_dir, resumed, straight)


# `agentrl train` killed right after the held-out evaluation of iteration 2 is logged (before
# any checkpoint after the starting point), then `agentrl train --resume`.
def _cli_killed_when(condition: str) -> str:
    """A script that runs `agentrl` and SIGKILLs itself right after logging a line for which
    `condition` (a Python expression of `step` and `metrics`) holds."""
    return f"""
import os, signal
from agentrl.training.metrics import MetricsLogger

log = MetricsLogger.log

def log_then_die(self, step, metrics):
    log(self, step, metrics)
    if {condition}:
        os.kill(os.getpid(), signal.SIGKILL)

MetricsLogger.log = log_then_die
from agentrl.cli import app
app()
"""


KILLED_AFTER_THE_EVALUATION = _cli_killed_when('step == 2 and any(key.startswith("eval/") for key in metrics)')


def test_agentrl_train_killed_then_resumed_logs_every_line_once(tmp_path, tiny_model_dir):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("run: {name: killed}\n")
    arguments = ["train", str(recipe), f"run.out_dir={tmp_path}", f"model.path={tiny_model_dir}",
                 "sft.demos=0", "eval.tasks=2", "rollout.tasks_per_iteration=2",
                 "rollout.group_size=2", "rollout.max_new_tokens=4", "train.iterations=3",
                 "train.eval_every=2", "train.log_trajectories=1"]
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_THE_EVALUATION, *arguments],
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = subprocess.run([sys.executable, "-m", "agentrl.cli", *arguments, "--resume"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming RL from iteration 0" in resumed.stdout

    run_dir = tmp_path / "killed"
    metrics = read_metrics(run_dir)
    assert [line["step"] for line in metrics if "reward/mean" in line] == [1, 2, 3]
    assert [line["step"] for line in metrics if "eval/succ@1" in line] == [2]
    assert _trajectory_iterations(run_dir) == [1, 2, 3]
    assert _tensorboard_steps(run_dir, "reward/mean") == [1, 2, 3]
    assert _tensorboard_steps(run_dir, "eval/succ@1") == [2]


def test_only_a_complete_checkpoint_is_picked(tmp_path, tiny_model_dir):
    trainer = _trainer(tmp_path / "run", tiny_model_dir)
    for iteration in (1, 2, 3):
        trainer.iteration = iteration
        trainer.save()
    first, second, third = (tmp_path / "run" / "checkpoints" / f"iter_00000{i}" for i in (1, 2, 3))
    assert not first.exists()  # keep_checkpoints=2
    trainer.save()  # iteration 3 again: replaced, nothing else left
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [second.name, third.name]
    assert latest_checkpoint(tmp_path / "run") == third
    (third / "model.safetensors").unlink()  # a directory left without its weights
    assert latest_checkpoint(tmp_path / "run") == second
    with (second / "trainer.pt").open("r+b") as f:  # or with a file cut short
        f.truncate(10)
    assert latest_checkpoint(tmp_path / "run") is None
    assert list_checkpoints(tmp_path / "run") == []


def test_a_checkpoint_written_before_manifests_still_resumes(tmp_path, tiny_model_dir):
    trainer = _trainer(tmp_path / "run", tiny_model_dir)
    trainer.iteration = 1
    old = trainer.save()
    (old / "manifest.json").unlink()
    assert latest_checkpoint(tmp_path / "run") == old
    assert _trainer(tmp_path / "run", tiny_model_dir).resume()
    (old / "model.safetensors").unlink()  # half deleted
    assert latest_checkpoint(tmp_path / "run") is None


# --- the killed run ----------------------------------------------------------------------------


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _train_and_kill(run_dir: Path, model_dir: Path, point: str, iteration: int) -> None:
    """Train, and SIGKILL this process at `point` while `iteration` (1-based) runs or is saved."""
    trainer = _trainer(run_dir, model_dir)
    now = lambda: trainer.iteration + 1 if point == "after_lines" else trainer.iteration  # noqa: E731

    if point == "after_lines":
        write_lines = trainer._log_trajectories

        def write_then_die(*args):
            write_lines(*args)
            if now() == iteration:
                _die()

        trainer._log_trajectories = write_then_die
    elif point == "writing_checkpoint":
        save = torch.save

        def die_instead_of_saving(obj, f, *args, **kwargs):
            if now() == iteration:
                _die()
            save(obj, f, *args, **kwargs)

        torch.save = die_instead_of_saving
    elif point == "deleting_checkpoint":
        rmtree = shutil.rmtree

        def delete_the_weights_then_die(path, *args, **kwargs):
            path = Path(path)
            if now() == iteration and (path / "trainer_state.json").is_file():
                (path / "model.safetensors").unlink()
                _die()
            rmtree(path, *args, **kwargs)

        shutil.rmtree = delete_the_weights_then_die
    else:
        raise ValueError(f"unknown kill point {point!r}")
    trainer.train()


if __name__ == "__main__":
    run_dir, model_dir, point, iteration = sys.argv[1:]
    _train_and_kill(Path(run_dir), Path(model_dir), point, int(iteration))
    sys.exit("the run ended without being killed")


def test_metrics_of_a_run_killed_mid_line_read_up_to_the_cut(tmp_path):
    """Until the run resumes (and cuts the half line away), its metrics still read."""
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "reward/mean": 0.5}\n{"step": 2, "rew')
    assert read_metrics(tmp_path) == [{"step": 1, "reward/mean": 0.5}]


# `agentrl train` killed right after the SFT warm-up logs its line of step 10 (SFT is not
# checkpointed: it runs again from the start), then `agentrl train --resume`.
KILLED_DURING_SFT = _cli_killed_when('step == 10 and "sft/loss" in metrics')


def test_agentrl_train_killed_during_sft_logs_every_sft_line_once(tmp_path, tiny_model_dir):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("run: {name: killed_sft}\n")
    arguments = ["train", str(recipe), f"run.out_dir={tmp_path}", f"model.path={tiny_model_dir}",
                 "sft.demos=48", "sft.batch_size=4", "sft.epochs=1", "eval.tasks=2",
                 "rollout.tasks_per_iteration=2", "rollout.group_size=2", "rollout.max_new_tokens=4",
                 "train.iterations=1", "train.log_trajectories=1"]
    killed = subprocess.run([sys.executable, "-c", KILLED_DURING_SFT, *arguments],
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_dir = tmp_path / "killed_sft"
    assert [line["step"] for line in read_metrics(run_dir)] == [10]
    resumed = subprocess.run([sys.executable, "-m", "agentrl.cli", *arguments, "--resume"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = read_metrics(run_dir)
    assert [line["step"] for line in metrics if "sft/loss" in line] == [10, 12]
    assert [line["step"] for line in metrics if "reward/mean" in line] == [1]
    assert _tensorboard_steps(run_dir, "sft/loss") == [10, 12]
    assert (run_dir / "sft_model" / "config.json").is_file()
    assert not (run_dir / "sft_model.partial").exists()
