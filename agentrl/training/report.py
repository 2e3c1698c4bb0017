"""The tables and plots a run leaves behind: before/after evaluation and the reward curve."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.table import Table

from agentrl.training.metrics import read_metrics

#: (metric key, column title) of the before/after table.
TABLE_COLUMNS = (
    ("success", "solved"),
    ("succ@1", "Succ@1"),
    ("succ@k", "Succ@k"),
    ("unique_answer_ratio", "unique-answer ratio"),
    ("mean_turns", "mean turns"),
    ("mean_return", "mean return"),
    ("mean_tool_calls", "tool calls"),
    ("infra_errors", "infra errors"),  # episodes lost to the infrastructure, not scored
)


def comparison_table(results: dict[str, dict[str, Any]], k: int) -> Table:
    table = Table(title=f"Held-out evaluation (k = {k})")
    table.add_column("model")
    for _, title in TABLE_COLUMNS:
        table.add_column(title, justify="right")
    for name, metrics in results.items():
        row = [name]
        for key, _ in TABLE_COLUMNS:
            value = metrics.get(key if key != "succ@k" else f"succ@{k}")
            if value is None or (isinstance(value, float) and math.isnan(value)):
                row.append("-")  # not measured (e.g. no answers to count unique ones among)
            else:
                row.append(str(value) if isinstance(value, int) else f"{value:.3f}")
        table.add_row(*row)
    return table


def write_results(run_dir: Path, results: dict[str, dict[str, Any]], k: int) -> Path:
    path = Path(run_dir) / "results.json"
    path.write_text(json.dumps({"k": k, **results}, indent=2))
    return path


def plot_reward_curve(run_dir: Path) -> Path | None:
    """reward/mean and rollout/success_rate per iteration (and held-out Succ@1 where evaluated
    during training), to reward_curve.png."""
    metrics = read_metrics(run_dir)
    rows = [r for r in metrics if "reward/mean" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [r["reward/mean"] for r in rows], label="reward/mean")
    ax.plot(steps, [r["rollout/success_rate"] for r in rows], label="rollout/success_rate")
    # Held-out evaluations during training (train.eval_every), where there are any.
    held_out = [r for r in metrics if "eval/succ@1" in r]
    if held_out:
        ax.plot([r["step"] for r in held_out], [r["eval/succ@1"] for r in held_out], "o--",
                label="held-out succ@1")
    ax.set_xlabel("iteration")
    ax.set_ylabel("value")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(run_dir) / "reward_curve.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
