"""`agentrl view RUN_DIR`: what a run did, read back from its run directory.

Shows, from the files every run writes (README, "Read the results"): the recipe's key settings, the
before/after evaluation table (`results.json`), the held-out evaluations run during training
(`train.eval_every`), a few rows of the training curves
(`metrics.jsonl`, evenly spaced over the iterations) and sampled trajectories of one
iteration (`trajectories.jsonl`), with each message's role, the reward and whether it solved
the task. Nothing is recomputed; a run still in progress can be viewed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agentrl.training.metrics import read_metrics
from agentrl.training.report import comparison_table

#: (metric key, column title) of the training-curve table.
CURVE_COLUMNS = (
    ("reward/mean", "reward"),
    ("rollout/success_rate", "success"),
    ("rollout/turns_mean", "turns"),
    ("policy/entropy", "entropy"),
    ("policy/approx_kl", "approx_kl"),
    ("policy/clipfrac", "clipfrac"),
    ("policy/grad_norm", "grad norm"),
    ("perf/iteration_s", "s/iter"),
)
ROLE_STYLES = {"system": "dim", "user": "cyan", "assistant": "green", "tool": "magenta"}


def view_run(run_dir: str | Path, console: Console | None = None, *, trajectories: int = 2,
             iteration: int | None = None, curve_rows: int = 8) -> None:
    """Print a summary of the run directory `run_dir` (see the module docstring)."""
    console = console or Console()
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml); pass the "
                                "directory a training run wrote, e.g. runs/demo")
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    console.print(_header(run_dir, config))

    results_path = run_dir / "results.json"
    if results_path.is_file():
        results = json.loads(results_path.read_text())
        k = int(results.pop("k", config.get("eval", {}).get("k", 5)))
        console.print(comparison_table(results, k))

    metrics = read_metrics(run_dir)
    held_out = [r for r in metrics if "eval/success" in r]
    if held_out:
        console.print(_held_out_table(held_out))
    rows = [r for r in metrics if "reward/mean" in r]
    if rows:
        console.print(_curve_table(rows, curve_rows))
    else:
        console.print("[dim]No RL iteration logged yet.[/dim]")

    if trajectories > 0:
        for panel in _trajectory_panels(run_dir / "trajectories.jsonl", trajectories, iteration):
            console.print(panel)


def _header(run_dir: Path, config: dict[str, Any]) -> Text:
    env = config.get("env", {})
    algorithm = config.get("algorithm", {})
    rollout = config.get("rollout", {})
    train = config.get("train", {})
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("iter_*")) \
        if (run_dir / "checkpoints").is_dir() else []
    text = Text()
    text.append(f"Run {run_dir}\n", style="bold")
    text.append(f"env {env.get('id')} {env.get('kwargs') or ''}\n")
    text.append(f"{algorithm.get('advantage')} (norm {algorithm.get('norm')}, agg {algorithm.get('agg')}), "
                f"{rollout.get('tasks_per_iteration')} tasks x {rollout.get('group_size')} rollouts, "
                f"lr {train.get('lr')}, {train.get('iterations')} iterations\n")
    text.append(f"checkpoints: {', '.join(checkpoints) if checkpoints else 'none'}")
    return text


def _held_out_table(rows: list[dict[str, Any]]) -> Table:
    """The evaluations run during training (`train.eval_every`), one row per evaluation."""
    keys = ["eval/success"] + sorted(k for k in rows[0] if k.startswith("eval/succ@")) + ["eval/mean_turns"]
    table = Table(title="Held-out evaluation during training (train.eval_every)")
    table.add_column("iteration", justify="right")
    for key in keys:
        table.add_column(key.removeprefix("eval/"), justify="right")
    for row in rows:
        table.add_row(str(row.get("step", "?")),
                      *("-" if row.get(key) is None else f"{row[key]:.3f}" for key in keys))
    return table


def _curve_table(rows: list[dict[str, Any]], count: int) -> Table:
    if len(rows) > count:  # evenly spaced, first and last included
        picks = sorted({round(i * (len(rows) - 1) / (count - 1)) for i in range(count)})
        rows = [rows[i] for i in picks]
    table = Table(title="Training curves (metrics.jsonl)")
    table.add_column("iteration", justify="right")
    for _, title in CURVE_COLUMNS:
        table.add_column(title, justify="right")
    for row in rows:
        cells = [str(row.get("step", "?"))]
        for key, _ in CURVE_COLUMNS:
            value = row.get(key)
            cells.append("-" if value is None else f"{value:.3g}")
        table.add_row(*cells)
    return table


def _trajectory_panels(path: Path, count: int, iteration: int | None) -> list[Panel]:
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        return []
    wanted = iteration if iteration is not None else max(r["iteration"] for r in records)
    chosen = [r for r in records if r["iteration"] == wanted][:count]
    if not chosen:
        available = sorted({r["iteration"] for r in records})
        raise ValueError(f"no trajectories logged for iteration {wanted}; logged iterations: "
                         f"{available[0]} to {available[-1]}")
    panels = []
    for record in chosen:
        body = Text()
        for message in record["messages"]:
            role = message["role"]
            body.append(f"{role}: ", style=f"bold {ROLE_STYLES.get(role, '')}")
            body.append(f"{message['content']}\n", style=ROLE_STYLES.get(role, ""))
        title = (f"iteration {record['iteration']}, group {record['group_id']}, "
                 f"rollout {record['traj_id']}: reward {record['reward']:+.3f}, "
                 f"{'solved' if record['success'] else 'not solved'}")
        panels.append(Panel(body, title=title, title_align="left"))
    return panels
