"""The evaluation report: one JSON file and the table `agentrl eval` prints.

The JSON file holds

    metrics        pass@k for each k of eval.pass_k, then the self-correction metrics
                   (success, succ@1, succ@k, unique_answer_ratio, mean_turns, ...), counts
                   (tasks, samples, episodes, infra_errors, tasks_short) and seconds
    generation     the recipe's generation section (backend, and a server's base_url and model)
    model          the checkpoint evaluated (None when a server samples)
    trajectories   every episode, scored or not (Trajectory.to_dict())
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from rich.table import Table

from agentrl.types import Trajectory

#: (metric key, row title, what it means) of the printed table, in order; pass@k rows come first.
TABLE_ROWS = (
    ("success", "success", "episodes that ended solved"),
    ("succ@1", "Succ@1", "episodes solved at the first turn"),
    ("succ@k", "Succ@k", "episodes solved within k turns (eval.k)"),
    ("unique_answer_ratio", "unique-answer ratio", "distinct answers / answers, per episode"),
    ("mean_turns", "AvgTurns", "turns per episode"),
    ("mean_return", "mean return", "return per episode"),
    ("mean_tool_calls", "tool calls", "tool calls per episode"),
    ("invalid_action_rate", "invalid actions", "turns whose action could not be parsed"),
    ("infra_errors", "infra errors", "episodes lost to the infrastructure (not scored)"),
)


def pass_keys(metrics: dict[str, Any]) -> list[str]:
    """The pass@k keys of `metrics` ("pass@1", "pass@5", ...), by k."""
    keys = [key for key in metrics if key.startswith("pass@") and key[5:].isdigit()]
    return sorted(keys, key=lambda key: int(key[5:]))


def eval_table(metrics: dict[str, Any], k: int, title: str = "Held-out evaluation") -> Table:
    """The metrics as a two-column table: pass@k rows, then the self-correction metrics."""
    tasks, samples = metrics.get("tasks"), metrics.get("samples")
    caption = f"{tasks} tasks x {samples} samples, {metrics.get('episodes')} scored episodes"
    table = Table(title=title, caption=caption)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("what it is")
    for key in pass_keys(metrics):
        shown = metrics.get(f"{key}_tasks", tasks)
        drawn = "a sample of a task is solved" if key == "pass@1" else f"{key[5:]} samples of a task include a solved one"
        table.add_row(key, _number(metrics[key]), f"{drawn} (unbiased, mean over {shown} tasks)")
    for key, title_, meaning in TABLE_ROWS:
        name = f"succ@{k}" if key == "succ@k" else key
        if name in metrics:
            table.add_row(title_.replace("@k", f"@{k}"), _number(metrics[name]), meaning)
    return table


def write_report(path: Path, metrics: dict[str, Any], trajectories: Sequence[Trajectory], *,
                 generation: dict[str, Any] | None = None, model: str | None = None) -> Path:
    """Write the report file (parent directories included); returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {"metrics": metrics, "generation": generation, "model": model,
              "trajectories": [t.to_dict() for t in trajectories]}
    path.write_text(json.dumps(report, indent=1))
    return path


def read_report(path: Path) -> dict[str, Any]:
    """A report file as written by `write_report`."""
    return json.loads(Path(path).read_text())


def _number(value: Any) -> str:
    if isinstance(value, bool) or isinstance(value, int):
        return str(int(value))
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return f"{value:.3f}"
