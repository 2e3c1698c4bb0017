"""`agentrl view RUN_DIR --tree`: one group's trajectories drawn as a tree of turns.

The run directory is hand-written: a trajectories.jsonl in the trainer's format with a branched
group (two trees whose trajectories share their first turns), a chain group (no branching) and
an older line without node ids or advantages.
"""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from agentrl.cli import app
from agentrl.viewer import group_tree, read_group
from agentrl.viewer.tree_view import first_line, one_line_action

PROMPT = "What is 17 + 25?\nUse the python tool, then answer in <answer>...</answer>."
CALL = "<python>print(17 + 25)</python>"
THINKING = "I should compute the sum exactly before answering, so I will run it in python first. "


def _line(iteration: int, group: int, traj: int, tree: int, turns: list[tuple[int, str, str]],
          reward: float, advantage: float | None, success: bool, **info: Any) -> dict[str, Any]:
    """One trajectories.jsonl line as the trainer writes it; `turns` = (node id, action, observation)."""
    line = {
        "iteration": iteration, "group_id": group, "traj_id": traj, "tree_id": tree,
        "node_path": [node for node, _, _ in turns], "reward": reward, "success": success,
        "task": {"seed": group},
        "messages": [{"role": "system", "content": "You are a careful agent."},
                     {"role": "user", "content": PROMPT}],
        "steps": [{"node_id": node, "action": action, "observation": observation, "reward": 0.0,
                   "action_valid": True, "anchor": "None", "action_span": [0, 1], "finish_reason": "stop"}
                  for node, action, observation in turns],
        "num_tokens": 100, "num_action_tokens": 20, "info": {"truncated": False, "turns": len(turns), **info},
    }
    if advantage is not None:
        line["advantage"] = advantage
    return line


# Group 0 of iteration 2: tree 0 runs the sum, then branches into a right and a wrong answer;
# tree 1 starts with a wrong call shared by three trajectories, two of which share a second call.
SUM = (0, THINKING + CALL, "42\n(exit code 0)")
WRONG_CALL = (3, "<python>print([17, 25][0] - 25)</python>", "-8")
RIGHT_CALL = (4, CALL, "42")
TREE_GROUP = [
    _line(2, 0, 0, 0, [SUM, (1, "<answer>42</answer>", "Correct.")], 1.0, 0.866, True),
    _line(2, 0, 1, 0, [SUM, (2, "<answer>43</answer>", "Wrong answer.")], 0.0, -0.866, False),
    _line(2, 0, 2, 1, [WRONG_CALL, RIGHT_CALL, (5, "<answer>42</answer>", "Correct.")], 1.0, 1.155, True),
    _line(2, 0, 3, 1, [WRONG_CALL, RIGHT_CALL, (7, "<answer>24</answer>", "Wrong answer.")], 0.0, -0.577, False),
    _line(2, 0, 4, 1, [WRONG_CALL, (6, "<answer>-8</answer>", "Wrong answer.")], 0.0, -0.577, False),
]
# Group 1 of iteration 2: three independent chains (each trajectory its own tree), one ended by a
# tool failure.
CHAIN_GROUP = [
    _line(2, 1, 0, 0, [(0, CALL, "42"), (1, "<answer>42</answer>", "Correct.")], 1.0, 0.707, True),
    _line(2, 1, 1, 1, [(2, CALL, "42"), (3, "<answer>41</answer>", "Wrong answer.")], 0.0, -0.707, False),
    _line(2, 1, 2, 2, [(4, CALL, "")], 0.0, None, False, infra_error="python sandbox crashed"),
]

#: What `agentrl view RUN --tree` prints for TREE_GROUP (also the sample in docs/tree_grpo.md).
TREE_GROUP_TEXT = """\
iteration 2, group 0: What is 17 + 25?  (5 trajectories, 2 trees)
├── tree 0 · 2 leaves · mean reward +0.500
│   └── node 0 · 2 leaves  I should compute the sum exactly…<python>print(17 + 25)</python>  → 42
│       ├── node 1  <answer>42</answer>  → Correct.
│       │   └── traj 0: reward +1.000  advantage +0.866  solved
│       └── node 2  <answer>43</answer>  → Wrong answer.
│           └── traj 1: reward +0.000  advantage -0.866  not solved
└── tree 1 · 3 leaves · mean reward +0.333
    └── node 3 · 3 leaves  <python>print([17, 25][0] - 25)</python>  → -8
        ├── node 4 · 2 leaves  <python>print(17 + 25)</python>  → 42
        │   ├── node 5  <answer>42</answer>  → Correct.
        │   │   └── traj 2: reward +1.000  advantage +1.155  solved
        │   └── node 7  <answer>24</answer>  → Wrong answer.
        │       └── traj 3: reward +0.000  advantage -0.577  not solved
        └── node 6  <answer>-8</answer>  → Wrong answer.
            └── traj 4: reward +0.000  advantage -0.577  not solved
"""


def _write_run(run_dir: Path, lines: list[dict[str, Any]]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "trajectories.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run_dir


def _render(lines: list[dict[str, Any]]) -> str:
    console = Console(file=StringIO(), width=120, color_system=None)
    console.print(group_tree(lines))
    return console.file.getvalue()


def _iteration_1() -> list[dict[str, Any]]:
    return [dict(line, iteration=1) for line in TREE_GROUP[:2]]


def test_a_branched_group_draws_each_shared_turn_once_with_its_leaf_count():
    text = _render(TREE_GROUP)
    assert text == TREE_GROUP_TEXT, text
    # The shared turns are one node each, however many trajectories pass through them.
    assert text.count("node 0 ") == 1 and text.count("node 3 ") == 1 and text.count("node 4 ") == 1
    # Only an observation's first line is shown, and the prompt's.
    assert "exit code" not in text and "Use the python tool" not in text


def test_a_chain_group_draws_separate_paths_and_an_infra_error():
    text = _render(CHAIN_GROUP)
    lines = text.splitlines()
    assert lines[0].endswith("(3 trajectories, 3 trees)")
    assert [line for line in lines if "tree " in line] == [
        "├── tree 0 · 1 leaf · mean reward +1.000",
        "├── tree 1 · 1 leaf · mean reward +0.000",
        "└── tree 2 · 1 leaf · mean reward +0.000",
    ]
    assert "leaves" not in text  # nothing is shared
    assert "traj 2: reward +0.000  advantage -  not solved  infra error: python sandbox crashed" in text
    # A turn without an observation shows no arrow.
    assert any(line.rstrip().endswith("node 4  <python>print(17 + 25)</python>") for line in lines), text


def test_lines_without_node_ids_or_advantages_draw_one_path_each():
    old = []
    for line in TREE_GROUP[:2]:  # both start with the same turn, but nothing says it is shared
        line = {key: value for key, value in line.items() if key not in ("tree_id", "node_path", "advantage")}
        line["steps"] = [{k: v for k, v in step.items() if k != "node_id"} for step in line["steps"]]
        old.append(line)
    text = _render(old)
    assert "trajectory 0 (logged without node ids) · 1 leaf" in text
    assert "trajectory 1 (logged without node ids) · 1 leaf" in text
    assert text.count("<python>print(17 + 25)</python>") == 2 and "leaves" not in text
    assert text.count("node -  ") == 4
    assert "traj 0: reward +1.000  advantage -  solved" in text


def test_a_node_id_given_two_different_turns_is_flagged():
    clashing = [TREE_GROUP[0], _line(2, 0, 1, 0, [(0, "<answer>41</answer>", "Wrong answer.")], 0.0, -1.0, False)]
    text = _render(clashing)
    assert text.count("node 0 ") == 1
    assert "node 0 · 2 leaves  (trajectories disagree on this turn's text)  I should" in text


def test_a_narrow_console_still_shows_every_tool_call():
    console = Console(file=StringIO(), width=70, color_system=None)
    console.print(group_tree(TREE_GROUP, width=70))
    lines = console.file.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 70
    calls = [line for line in lines if "<python>" in line]
    assert len(calls) == 3 and all(line.endswith("</python>") or "</python>  → " in line for line in calls), lines
    assert "node 0 · 2 leaves  I sho…<python>print(17 + 25)</python>  → 42" in lines[2]


def test_a_long_action_keeps_its_tool_call_visible():
    call = "<search>capital of Oskaria</search>"
    shortened = one_line_action("Let me think.\n" * 20 + call, 60)
    assert len(shortened) == 60 and shortened.endswith("…" + call) and shortened.startswith("Let me think. Let")
    long_call = "<search>" + "very long query " * 10 + "</search>"
    shortened = one_line_action(long_call, 40)
    assert len(shortened) == 40 and shortened.startswith("<search>very") and shortened.endswith("</search>")
    shortened = one_line_action("Let me think. " + long_call, 40)
    assert len(shortened) == 40 and shortened.startswith("…<search>very") and shortened.endswith("</search>")
    # A call cut short by the token limit has no closing tag: its opening tag is kept.
    cut = one_line_action("x" * 80 + " <tool_call>{\"name\": \"search\"", 50)
    assert cut.endswith("…<tool_call>{\"name\": \"search\"") and len(cut) == 50
    assert one_line_action("no call at all " * 10, 20) == "no call at all no c…"
    assert first_line("\n\n  Doc 1 (Title: Dilur)\nmore", 12) == "Doc 1 (Titl…"


def test_read_group_defaults_to_the_last_iteration_and_its_first_group(tmp_path):
    run = _write_run(tmp_path / "run", [*_iteration_1(), *CHAIN_GROUP, *TREE_GROUP])
    assert [line["traj_id"] for line in read_group(run)] == [0, 1, 2]  # group 1, logged first
    assert read_group(run, group=0) == TREE_GROUP
    assert len(read_group(run, iteration=1)) == 2
    # A last line cut short (a run writing it right now) is skipped; a broken line elsewhere is not.
    with (run / "trajectories.jsonl").open("a") as f:
        f.write('{"iteration": 3, "group_')
    assert read_group(run, group=0) == TREE_GROUP
    (run / "trajectories.jsonl").write_text('{"iteration": 1\n' + json.dumps(TREE_GROUP[0]) + "\n")
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        read_group(run)


def _view(*args: str):
    return CliRunner().invoke(app, ["view", *args])


def _error_line(result) -> str:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_the_view_command_draws_a_tree_and_names_what_is_missing(tmp_path):
    run = _write_run(tmp_path / "run", [*_iteration_1(), *TREE_GROUP, *CHAIN_GROUP])
    shown = _view(str(run), "--tree")
    assert shown.exit_code == 0, shown.stderr
    assert shown.stdout.startswith("iteration 2, group 0: What is 17 + 25?")
    assert "node 3 " in shown.stdout and "traj 4: reward +0.000" in shown.stdout
    chain = _view(str(run), "--tree", "--group", "1")
    assert chain.exit_code == 0 and "infra error" in chain.stdout

    assert _error_line(_view(str(run), "--tree", "--iteration", "9")) == \
        "error: iteration 9 not in trajectories.jsonl (iterations 1-2)"
    assert _error_line(_view(str(run), "--tree", "--iteration", "1", "--group", "7")).startswith(
        "error: group 7 not in iteration 1 of trajectories.jsonl (groups 0;")
    assert _error_line(_view(str(run), "--tree", "--group", "7")).startswith(
        "error: group 7 not in iteration 2 of trajectories.jsonl (groups 0-1;")
    assert _error_line(_view(str(run), "--group", "1")) == \
        "error: --group picks the group that --tree draws; add --tree"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _error_line(_view(str(empty), "--tree")) == (
        f"error: no trajectories.jsonl in {empty}; a training run writes it there when "
        "train.log_trajectories > 0")
    assert _error_line(_view(str(tmp_path / "nope"), "--tree")).startswith(f"error: {tmp_path / 'nope'} does not exist")


def test_the_docs_show_what_the_view_prints():
    page = (Path(__file__).resolve().parents[1] / "docs" / "tree_grpo.md").read_text()
    assert "## Seeing a tree" in page
    assert "```text\n" + TREE_GROUP_TEXT + "```" in page
