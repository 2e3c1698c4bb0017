"""The `agentrl` command: bad input ends with one line naming the cause, exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

AGENTRL = [sys.executable, "-m", "agentrl.cli"]


def _run(*args, cwd=None):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*AGENTRL, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=120)


@pytest.mark.parametrize(
    "override, named",
    [
        ("train.lrr=1", "train.lrr: unknown field"),
        ("rollout.group_size=many", "rollout.group_size: Input should be a valid integer"),
        ("env.id=agentrl/Nope-v0", "unknown env id 'agentrl/Nope-v0'"),
    ],
)
def test_bad_recipe_exits_nonzero_with_one_line(tmp_path, override, named):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"run: {{out_dir: {tmp_path}/runs}}\n")
    result = _run("train", str(recipe), override)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and named in lines[0], result.stderr
    assert not (tmp_path / "runs").exists()  # nothing written for a run that cannot start


def test_missing_recipe_file_is_one_line(tmp_path):
    result = _run("train", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_env_list_and_check():
    listed = _run("env", "list")
    assert listed.returncode == 0 and "agentrl/ArithmeticTryAgain-v0" in listed.stdout
    checked = _run("env", "check", "agentrl/ArithmeticTryAgain-v0")
    assert checked.returncode == 0 and "passes" in checked.stdout
    unknown = _run("env", "check", "agentrl/Nope-v0")
    assert unknown.returncode == 2 and "unknown env id" in unknown.stderr


def test_view_summarises_a_run_directory(tmp_path, tiny_model_dir):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("run: {name: small}\n")
    trained = _run("train", str(recipe), f"run.out_dir={tmp_path}", "run.name=small",
                   f"model.path={tiny_model_dir}", "sft.demos=0", "eval.tasks=4",
                   "rollout.tasks_per_iteration=2", "rollout.group_size=2",
                   "rollout.max_new_tokens=4", "train.iterations=3", "train.eval_every=2")
    assert trained.returncode == 0, trained.stderr[-2000:]
    # A held-out evaluation during training at iteration 2 (iteration 3 is "after RL").
    assert sorted(p.name for p in (tmp_path / "small" / "eval").iterdir()) == [
        "after_rl.json", "before_rl.json", "iter_0002.json"]
    evaluated = [json.loads(line) for line in (tmp_path / "small" / "metrics.jsonl").read_text().splitlines()
                 if "eval/succ@1" in line]
    assert [row["step"] for row in evaluated] == [2] and 0.0 <= evaluated[0]["eval/succ@1"] <= 1.0
    viewed = _run("view", str(tmp_path / "small"), "--trajectories", "1")
    assert viewed.returncode == 0, viewed.stderr
    for expected in ("agentrl/ArithmeticTryAgain-v0", "Held-out evaluation", "before RL", "after RL",
                     "Held-out evaluation during training",
                     "Training curves", "iteration 3, group", "user: What is"):
        assert expected in viewed.stdout, (expected, viewed.stdout)

    missing = _run("view", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "not a run directory" in missing.stderr
    wrong_iteration = _run("view", str(tmp_path / "small"), "--iteration", "99")
    assert wrong_iteration.returncode == 2 and "logged iterations: 1 to 3" in wrong_iteration.stderr
    assert "Traceback" not in missing.stderr + wrong_iteration.stderr


def test_bench_lists_the_benchmarks_and_names_an_unknown_one():
    listed = _run("bench")
    assert listed.returncode == 0, listed.stderr
    for name in ("rl_update_overhead", "generation_throughput", "search_tools", "sandbox_latency"):
        assert name in listed.stdout
    unknown = _run("bench", "nope")
    assert unknown.returncode == 2 and "unknown benchmark 'nope'; available:" in unknown.stderr
    assert "Traceback" not in unknown.stderr
