"""The `agentrl` command: bad input ends with one line naming the cause, exit code 2."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

AGENTRL = [sys.executable, "-m", "agentrl.cli"]
REPOSITORY = Path(__file__).resolve().parents[2]


def _run(*args, cwd=None, stdin=None):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*AGENTRL, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          input=stdin, timeout=120)


def _one_error_line(result) -> str:
    """The error line a failed command ended with, after checking that it failed as a user error
    does: exit code 2, no traceback, one line and nothing after it (progress lines of what ran
    before the error, such as loading the model's weights, may come first)."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], result.stderr
    return lines[-1]


@pytest.mark.parametrize(
    "override, named",
    [
        ("train.lrr=1", "train.lrr: unknown field"),
        ("rollout.group_size=many", "rollout.group_size: Input should be a valid integer"),
        ("env.id=agentrl/Nope-v0", "unknown env id 'agentrl/Nope-v0'"),
        ("env.imports=[no_such_envs]", "cannot import 'no_such_envs'"),
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


def test_env_check_and_play_import_a_users_module(tmp_path):
    """A user's env registers when its module is imported: `--import MODULE` or `MODULE:ID`."""
    # The repository's own example, run from the repository as a new user would.
    for args in (["--import", "examples.custom_tool_env", "custom/Cheaper-v0"],
                 ["examples.custom_tool_env:custom/Cheaper-v0"]):
        checked = _run("env", "check", *args, cwd=REPOSITORY)
        assert checked.returncode == 0 and "custom/Cheaper-v0 passes" in checked.stdout, checked.stderr
    played = _run("env", "play", "--import", "examples.custom_tool_env", "custom/Cheaper-v0",
                  cwd=REPOSITORY, stdin=":oracle\n:oracle\n:oracle\n")
    assert played.returncode == 0, played.stderr
    assert "Which is cheaper" in played.stdout and "[episode over: solved; return 1" in played.stdout
    listed = _run("env", "list", "--import", "examples.custom_tool_env", cwd=REPOSITORY)
    assert "custom/Cheaper-v0" in listed.stdout and "agentrl/SearchQA-v0" in listed.stdout, listed.stderr

    # Without the import the id is unknown, and the error says how to import the module.
    assert "--import MODULE" in _one_error_line(_run("env", "check", "custom/Cheaper-v0", cwd=REPOSITORY))
    missing = _one_error_line(_run("env", "check", "--import", "no_such_envs", "custom/Cheaper-v0"))
    assert "cannot import 'no_such_envs'" in missing and "No module named 'no_such_envs'" in missing
    assert "cannot import 'no_such_envs'" in _one_error_line(_run("env", "play", "no_such_envs:x/Y-v0"))
    # A module of the user's that needs a library which is not installed.
    (tmp_path / "games.py").write_text("import no_such_game_library\n")
    needs = _one_error_line(_run("env", "check", "games:x/Y-v0", cwd=tmp_path))
    assert "cannot import 'games': it needs the module 'no_such_game_library'" in needs, needs


def test_env_check_does_not_import_the_training_stack():
    """Checking an env needs gymnasium and the env, not torch and transformers (seconds to import)."""
    probe = ("import sys\n"
             "sys.argv = ['agentrl', 'env', 'check', 'agentrl/ArithmeticTryAgain-v0']\n"
             "from agentrl.cli import main\n"
             "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
             "heavy = ('torch', 'transformers', 'agentrl.training.run', 'agentrl.rollout')\n"
             "print('imported:', [name for name in heavy if name in sys.modules])\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "passes" in result.stdout and "imported: []" in result.stdout, result.stdout


def test_a_template_that_is_not_append_safe_is_one_line(tmp_path, tiny_model_dir):
    """rollout.check_template=true with a chat template that renders earlier turns differently
    once later turns exist (here: it writes the number of messages at the top)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    template = model / "chat_template.jinja"
    template.write_text("{{- 'messages: ' + (messages | length | string) + '\\n' -}}" + template.read_text())
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("run: {name: unsafe}\n")
    result = _run("train", str(recipe), f"run.out_dir={tmp_path}", f"model.path={model}",
                  "rollout.check_template=true", "sft.demos=0", "eval.tasks=1",
                  "rollout.tasks_per_iteration=1", "rollout.group_size=2", "rollout.max_new_tokens=4",
                  "train.iterations=1")
    line = _one_error_line(result)
    assert "chat template is not append-safe" in line, line
    assert re.search(r"built: 'messages: 2\\n.*rendered: 'messages: 4\\n", line), line  # where they differ
    assert "rollout.check_template=false" in line, line  # and the fix


def test_a_checkpoint_without_a_chat_template_is_one_line(tmp_path, tiny_model_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").unlink()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("run: {name: no_template}\n")
    result = _run("train", str(recipe), f"run.out_dir={tmp_path}", f"model.path={model}", "sft.demos=0",
                  "eval.tasks=1", "rollout.tasks_per_iteration=1", "rollout.group_size=2",
                  "rollout.max_new_tokens=4", "train.iterations=1")
    line = _one_error_line(result)
    assert "the tokenizer has no chat template" in line and "instruction-tuned checkpoint" in line, line


def test_view_summarises_a_run_directory(tmp_path, tiny_model_dir):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("run: {name: small}\n")
    trained = _run("train", str(recipe), f"run.out_dir={tmp_path}", "run.name=small",
                   f"model.path={tiny_model_dir}", "sft.demos=0", "eval.tasks=4",
                   "rollout.tasks_per_iteration=2", "rollout.group_size=2",
                   "rollout.max_new_tokens=4", "train.iterations=3", "train.eval_every=2")
    assert trained.returncode == 0, trained.stderr[-2000:]
    # stdout is a pipe, not a terminal: no progress bar, but one plain line per RL iteration.
    progress = [line for line in trained.stdout.splitlines() if line.startswith("RL ")]
    assert [line.split()[1] for line in progress] == ["1/3", "2/3", "3/3"], trained.stdout
    assert re.fullmatch(r"RL 1/3  reward [+-]\d\.\d{3}  success \d\.\d\d  \d+ tok/s  elapsed \d+:\d\d:\d\d",
                        progress[0]), progress[0]
    assert "Evaluating on 4 held-out tasks (before_rl)" in trained.stdout  # stage lines, too
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


def test_training_progress_is_a_bar_on_a_terminal_and_lines_elsewhere():
    from io import StringIO

    from rich.console import Console
    from rich.progress import Progress

    from agentrl.training.progress import progress, status

    assert isinstance(progress(Console(file=StringIO(), force_terminal=True)), Progress)
    log = StringIO()
    console = Console(file=log, width=200)  # a file: not a terminal
    with status(console, "Writing 25 oracle demonstrations"), progress(console) as shown:
        task = shown.add_task("SFT warm-up", total=None, stats="", line_every=10)
        for step in range(1, 26):
            shown.update(task, completed=step, total=25, stats=f"loss {1 / step:.3f}")
    lines = log.getvalue().splitlines()
    assert lines[0] == "Writing 25 oracle demonstrations"
    assert [line.split("  ")[:2] for line in lines[1:]] == [  # every 10th step and the last one
        ["SFT warm-up 10/25", "loss 0.100"], ["SFT warm-up 20/25", "loss 0.050"],
        ["SFT warm-up 25/25", "loss 0.040"]]
    assert all(re.search(r"  elapsed \d+:\d\d:\d\d$", line) for line in lines[1:]), lines
