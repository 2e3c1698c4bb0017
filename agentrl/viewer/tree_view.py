"""`agentrl view RUN_DIR --tree`: one group's rollouts drawn as the tree they grew from.

With branched rollouts (Tree-GRPO) the trajectories of one task share their first turns: a
branch copies an episode up to turn k and samples on from there. Each logged step carries the
`node_id` of its turn and each trajectory its `tree_id` and `node_path`, so the lines of one
group in `trajectories.jsonl` describe a forest: nodes with the same id in the same group are the
same turn (same tokens) and are drawn once, with the number of trajectories (leaves) below them.

    iteration 3, group 0: What is 17 + 25?  (4 trajectories, 2 trees)
    ├── tree 0 · 2 leaves · mean reward +0.500
    │   └── node 0 · 2 leaves  <python>print(17 + 25)</python>  → 42
    │       ├── node 1  <answer>42</answer>  → Correct.
    │       │   └── traj 0: reward +1.000  advantage +0.866  solved
    ...

A run without branching (every trajectory its own tree) draws as separate paths, and lines
written before node ids existed (no `node_id`, no `advantage`) draw each trajectory as its own
path with "-" for the advantage. Nothing here imports torch: viewing a tree is instant.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from rich.console import Console
from rich.text import Text
from rich.tree import Tree

TRAJECTORIES_FILE = "trajectories.jsonl"

#: How many characters of a turn's action, its observation and the task's prompt a line shows.
ACTION_WIDTH = 64
OBSERVATION_WIDTH = 40
PROMPT_WIDTH = 60

# A closing tag (`</search>`, `</tool_call>`) and an opening one (`<python>`): the tool call a
# shortened action must keep visible is the last tag pair of the turn.
_CLOSING_TAG = re.compile(r"</([A-Za-z_][\w-]*)>")
_OPENING_TAG = re.compile(r"<([A-Za-z_][\w-]*)(?:\s[^<>]*)?>")


# --- reading trajectories.jsonl ----------------------------------------------------------------


def read_group(run_dir: str | Path, iteration: int | None = None,
               group: int | None = None) -> list[dict[str, Any]]:
    """The logged trajectories of one group of one iteration, in file order.

    Defaults: the last iteration in the file and the first group logged for it. Raises
    FileNotFoundError when the run directory has no trajectories.jsonl and ValueError, naming
    what the file does hold, for an empty file or an iteration or group it lacks.
    """
    run_dir = Path(run_dir)
    path = run_dir / TRAJECTORIES_FILE
    if not path.is_file():
        where = f"{run_dir} does not exist" if not run_dir.exists() else f"no {TRAJECTORIES_FILE} in {run_dir}"
        raise FileNotFoundError(f"{where}; a training run writes it there when train.log_trajectories > 0")
    records = _read_records(path)
    if not records:
        raise ValueError(f"{path} holds no trajectories yet (the first RL iteration has not ended)")

    iterations = sorted({int(r["iteration"]) for r in records})
    wanted = iterations[-1] if iteration is None else iteration
    in_iteration = [r for r in records if int(r["iteration"]) == wanted]
    if not in_iteration:
        raise ValueError(f"iteration {wanted} not in {TRAJECTORIES_FILE} (iterations {_ranges(iterations)})")

    groups = list(dict.fromkeys(int(r["group_id"]) for r in in_iteration))  # file order
    chosen = groups[0] if group is None else group
    lines = [r for r in in_iteration if int(r["group_id"]) == chosen]
    if not lines:
        raise ValueError(f"group {chosen} not in iteration {wanted} of {TRAJECTORIES_FILE} "
                         f"(groups {_ranges(sorted(groups))}; only the first train.log_trajectories "
                         "trajectories of an iteration are logged)")
    return lines


def _read_records(path: Path) -> list[dict[str, Any]]:
    """Every JSON line of `path`. A last line cut short (a run writing it right now, or killed
    while writing) is skipped; a broken line elsewhere is an error naming its number."""
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise ValueError(f"{path} line {number} is not JSON ({exc.msg}); "
                             "the file is damaged: remove that line to view the rest") from None
    return records


def _ranges(values: Sequence[int]) -> str:
    """`[1, 2, 3, 5]` -> "1-3, 5": how an error names what the file holds."""
    parts: list[str] = []
    start = previous = None
    for value in [*values, None]:
        if value is not None and previous is not None and value == previous + 1:
            previous = value
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = value
    return ", ".join(parts)


# --- building the tree -------------------------------------------------------------------------


@dataclass
class _Node:
    """One turn as drawn: the first trajectory's step that reached it, and who passes through."""

    node_id: int | None
    step: Mapping[str, Any]
    leaves: int = 0
    disagrees: bool = False  # two trajectories gave this node id different turns (a logging bug)
    children: dict[Any, "_Node"] = field(default_factory=dict)
    ended_here: list[Mapping[str, Any]] = field(default_factory=list)


def group_tree(records: Sequence[Mapping[str, Any]], *, width: int | None = None) -> Tree:
    """The rich Tree of one group's trajectories (the lines of trajectories.jsonl that share an
    iteration and a group id): the task's prompt at the root, one subtree per tree id, one node
    per turn (shared turns once), each trajectory's outcome as a leaf under its last turn.

    A turn shows up to ACTION_WIDTH characters of its action and OBSERVATION_WIDTH of its
    observation; given the console's `width`, deeper and longer lines take less of both, the
    observation first, so that a narrow terminal still shows each turn's tool call.
    """
    if not records:
        raise ValueError("group_tree needs at least one trajectory record")
    records = sorted(records, key=lambda r: (_tree_key(r), int(r.get("traj_id", 0))))
    trees: dict[tuple[int, int], _Node] = {}
    for record in records:
        root = trees.setdefault(_tree_key(record), _Node(node_id=None, step={}))
        root.leaves += 1
        node = root
        for key, node_id, step in _turns(record):
            child = node.children.get(key)
            if child is None:
                child = node.children[key] = _Node(node_id=node_id, step=step)
            elif _turn_text(child.step) != _turn_text(step):
                child.disagrees = True
            child.leaves += 1
            node = child
        node.ended_here.append(record)

    first = records[0]
    label = Text(f"iteration {first.get('iteration', '?')}, group {first.get('group_id', '?')}: ",
                 style="bold", no_wrap=True, overflow="ellipsis")
    label.append(_shorten(_prompt(first), PROMPT_WIDTH))
    label.append(f"  ({_count(len(records), 'trajectory', 'trajectories')}, "
                 f"{_count(len(trees), 'tree', 'trees')})", style="dim")
    tree = Tree(label, guide_style="dim")
    for (without_node_ids, number), root in trees.items():
        rewards = [float(r.get("reward", 0.0)) for r in _records_below(root)]
        tree_label = Text(f"trajectory {number} (logged without node ids)" if without_node_ids
                          else f"tree {number}", style="bold blue", no_wrap=True, overflow="ellipsis")
        tree_label.append(f" · {_count(root.leaves, 'leaf', 'leaves')} · mean reward "
                          f"{sum(rewards) / len(rewards):+.3f}", style="dim")
        _draw(tree.add(tree_label), root, depth=1, width=width)
    return tree


def _tree_key(record: Mapping[str, Any]) -> tuple[int, int]:
    """(0, tree id) for a trajectory with node ids; (1, trajectory id) for one without: a line
    written before node ids existed is drawn as a path of its own, after the trees."""
    if _node_ids(record) is None:
        return 1, int(record.get("traj_id", 0))
    return 0, int(record.get("tree_id") or 0)


def _node_ids(record: Mapping[str, Any]) -> list[int] | None:
    """The node id of each turn (the steps' `node_id`, else the `node_path`), or None when the
    line has none for some turn."""
    steps = record.get("steps") or []
    node_ids = [step.get("node_id") for step in steps]
    if any(node_id is None for node_id in node_ids):
        node_ids = list(record.get("node_path") or [])
    if len(node_ids) != len(steps) or any(node_id is None for node_id in node_ids):
        return None
    return [int(node_id) for node_id in node_ids]


def _turns(record: Mapping[str, Any]) -> Iterable[tuple[Any, int | None, Mapping[str, Any]]]:
    """(key, node id, step) of each turn. The key is the node id, which is what makes shared
    turns one node; a trajectory without node ids (an older file) gets keys of its own, so it
    draws as its own path."""
    steps = record.get("steps") or []
    node_ids = _node_ids(record)
    if node_ids is None:
        return [(("traj", record.get("traj_id"), turn), None, step) for turn, step in enumerate(steps)]
    return [(node_id, node_id, step) for node_id, step in zip(node_ids, steps)]


def _turn_text(step: Mapping[str, Any]) -> tuple[str, str]:
    return str(step.get("action", "")), str(step.get("observation", ""))


def _records_below(node: _Node) -> list[Mapping[str, Any]]:
    found = list(node.ended_here)
    for child in node.children.values():
        found.extend(_records_below(child))
    return found


def _draw(branch: Tree, node: _Node, depth: int, width: int | None) -> None:
    """Add `node`'s leaves and children under `branch`; their lines start `depth` guides in."""
    for record in node.ended_here:
        branch.add(_leaf_label(record))
    room = None if width is None else width - _GUIDE_WIDTH * (depth + 1)
    for child in node.children.values():
        _draw(branch.add(_node_label(child, room)), child, depth + 1, width)


#: How many columns each level of the tree indents its lines (rich's guide, "│   ").
_GUIDE_WIDTH = 4
_ARROW = "  → "


def _node_label(node: _Node, room: int | None) -> Text:
    """`node 4 · 2 leaves  <action>  → <observation>` in `room` columns (None: fixed widths)."""
    label = Text(no_wrap=True, overflow="ellipsis")
    label.append("node -" if node.node_id is None else f"node {node.node_id}", style="dim")
    # The leaf count and a disagreement come before the texts, which a narrow terminal cuts.
    if node.leaves > 1:
        label.append(f" · {node.leaves} leaves", style="bold")
    if node.disagrees:
        label.append("  (trajectories disagree on this turn's text)", style="bold red")
    label.append("  ")
    action = " ".join(str(node.step.get("action", "")).split())
    observation = first_line(str(node.step.get("observation", "")), OBSERVATION_WIDTH)
    action_width = ACTION_WIDTH
    if room is not None:
        room -= len(label.plain)
        wanted = min(len(action), ACTION_WIDTH) + (len(_ARROW) + len(observation) if observation else 0)
        if wanted > room:  # the observation gives way first, down to a third of the room
            observation_room = room // 3 - len(_ARROW)
            observation = _shorten(observation, observation_room) if observation_room >= 6 else ""
            action_width = max(room - (len(_ARROW) + len(observation) if observation else 0), 16)
    label.append(one_line_action(action, action_width),
                 style="green" if node.step.get("action_valid", True) else "yellow")
    if observation:
        label.append(_ARROW, style="dim")
        label.append(observation, style="magenta")
    return label


def _leaf_label(record: Mapping[str, Any]) -> Text:
    label = Text(no_wrap=True, overflow="ellipsis")
    label.append(f"traj {record.get('traj_id', '?')}: ", style="bold")
    label.append(f"reward {float(record.get('reward', 0.0)):+.3f}")
    advantage = record.get("advantage")
    label.append("  advantage " + ("-" if advantage is None else f"{float(advantage):+.3f}"))
    if record.get("success") is True:
        label.append("  solved", style="green")
    elif record.get("success") is False:
        label.append("  not solved", style="dim")
    infra_error = (record.get("info") or {}).get("infra_error")
    if infra_error:
        label.append(f"  infra error: {first_line(str(infra_error), OBSERVATION_WIDTH)}", style="bold red")
    return label


# --- one-line texts ----------------------------------------------------------------------------


def one_line_action(action: str, width: int = ACTION_WIDTH) -> str:
    """`action` on one line of at most `width` characters, its tool call kept visible: what is
    cut is the reasoning before the call, then the middle of the call itself."""
    text = " ".join(action.split())
    if len(text) <= width:
        return text
    call_start = _last_call_start(text)
    if call_start is None:
        return text[: width - 1] + "…"
    before, call = text[:call_start], text[call_start:]
    room = width - len(call) - 1  # what is left for the reasoning, after "…"
    if not before.strip():
        return _shorten_middle(call, width)
    if room < 0:
        return "…" + _shorten_middle(call, width - 1)
    return before[:room] + "…" + call


def _last_call_start(text: str) -> int | None:
    """Where the last tool call (`<search>...</search>`, `<tool_call>...`) begins: the opening
    tag of the last closing tag, else the last opening tag (a call cut short by the token limit)."""
    closings = list(_CLOSING_TAG.finditer(text))
    if closings:
        last = closings[-1]
        start = text.rfind(f"<{last.group(1)}", 0, last.start())
        if start >= 0:
            return start
    openings = list(_OPENING_TAG.finditer(text))
    return openings[-1].start() if openings else None


def _shorten_middle(text: str, width: int) -> str:
    """`text` in `width` characters, its start and end kept (`<search>very lo…</search>`)."""
    if len(text) <= width:
        return text
    tail = (width - 1) // 3
    head = width - 1 - tail
    return text[:head] + "…" + (text[-tail:] if tail else "")


def first_line(text: str, width: int = OBSERVATION_WIDTH) -> str:
    """The first non-blank line of `text`, stripped, at most `width` characters."""
    for line in text.splitlines():
        if line.strip():
            return _shorten(line.strip(), width)
    return ""


def _shorten(text: str, width: int) -> str:
    """`text` in at most `width` characters, "…" ending a cut one."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"[: max(width, 0)]


def _prompt(record: Mapping[str, Any]) -> str:
    """The first line of the task's first user message (what the agent was asked)."""
    for message in record.get("messages") or []:
        if message.get("role") == "user":
            return first_line(str(message.get("content", "")), 10_000) or "(empty prompt)"
    return "(no user message)"


def _count(number: int, singular: str, plural: str) -> str:
    return f"{number} {singular if number == 1 else plural}"


# --- printing ----------------------------------------------------------------------------------


def view_tree(run_dir: str | Path, console: Console | None = None, *, iteration: int | None = None,
              group: int | None = None) -> None:
    """Print the tree of one group of `run_dir`'s trajectories.jsonl (see `read_group` for the
    defaults and the errors)."""
    console = console or Console()
    console.print(group_tree(read_group(run_dir, iteration, group), width=console.width))
