"""The tool counters of an iteration's trajectories, as `tools/...` metrics.

A ToolEnv keeps episode-cumulative counters in its step info (`agentrl.envs.tool_env`), and the
last step's values travel in `Trajectory.info`. Summed over an iteration's trajectories they
give what metrics.jsonl logs: the model's failed calls, timeouts, infrastructure failures and
their retries, cache hits, and per tool its calls and mean latency.
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
    for trajectory in trajectories:
        for key, value in trajectory.info.items():
            if key.startswith("tools/") and isinstance(value, (int, float)) and not isinstance(value, bool):
                totals[key] += float(value)
    if not totals:
        return {}
    metrics = {key: totals[key] for key in SUMMED}
    for key in [k for k in totals if k.count("/") == 2 and k.endswith("/calls")]:
        tool = key.split("/")[1]
        calls = totals[key]
        metrics[f"tools/{tool}/calls"] = calls
        metrics[f"tools/{tool}/latency_s"] = totals[f"tools/{tool}/seconds"] / calls if calls else 0.0
    return metrics
