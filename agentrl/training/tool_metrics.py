"""The tool counters of an iteration's trajectories, as `tools/...` metrics.

A ToolEnv keeps episode-cumulative counters in its step info (`agentrl.envs.tool_env`). What a
turn did is its counters minus those of the turn before; summed over the iteration's distinct
turns (nodes: a turn that branches share is counted once, as it ran once) they give what
metrics.jsonl logs: the model's failed calls, timeouts, infrastructure failures and their
retries, cache hits, and per tool its calls and mean latency.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from agentrl.types import Trajectory

#: Counters summed as they are (`tools/calls` comes from the rollout budget instead).
SUMMED = ("tools/errors", "tools/timeouts", "tools/infra_errors", "tools/infra_retries", "tools/cache_hits")


def tool_metrics(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """`tools/<counter>` sums and, per tool, `tools/<tool>/calls` and `tools/<tool>/latency_s`
    (seconds the env waited per call). Empty for trajectories of envs without tools."""
    totals: dict[str, float] = defaultdict(float)
    seen: set[tuple[int, int]] = set()
    for trajectory in trajectories:
        before: dict[str, float] = {}
        for step in trajectory.steps:
            counters = _counters(step.info)
            if (trajectory.group_id, step.node_id) not in seen:
                seen.add((trajectory.group_id, step.node_id))
                for key, value in counters.items():
                    totals[key] += value - before.get(key, 0.0)
            before = counters
    if not totals:
        return {}
    metrics = {key: totals[key] for key in SUMMED}
    for key in [k for k in totals if k.count("/") == 2 and k.endswith("/calls")]:
        tool = key.split("/")[1]
        calls = totals[key]
        metrics[f"tools/{tool}/calls"] = calls
        metrics[f"tools/{tool}/latency_s"] = totals[f"tools/{tool}/seconds"] / calls if calls else 0.0
    return metrics


def _counters(info: dict) -> dict[str, float]:
    return {key: float(value) for key, value in info.items()
            if key.startswith("tools/") and isinstance(value, (int, float)) and not isinstance(value, bool)}
