"""What the learning comparisons share: one RL run from a saved SFT checkpoint, and mean ± SE.

Each run is `agentrl train RECIPE [settings]` in its own process, from the given SFT model
(`sft.demos=0`), with held-out evaluation before and after RL; the row holds the figures a
comparison reports: held-out success before and after, tool calls per held-out episode, and
the training budget spent (generated tokens, tool calls, trajectories) from metrics.jsonl.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path


def run_from_sft(name: str, recipe: str, settings: list[str], *, sft: Path, seed: int, iterations: int,
                 out_dir: Path, extra: list[str]) -> dict:
    """Train `recipe` with `settings` from the SFT checkpoint `sft`; its figures as a row."""
    command = [sys.executable, "-m", "agentrl.cli", "train", recipe, *settings,
               f"model.path={sft}", "sft.demos=0", f"train.iterations={iterations}",
               "train.eval_every=0", f"run.seed={seed}", f"run.name={name}",
               f"run.out_dir={out_dir}", "run.torch_threads=1", *extra]
    started = time.perf_counter()
    with (out_dir / f"{name}.log").open("w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    results = json.loads((out_dir / name / "results.json").read_text())
    metrics = [json.loads(line) for line in (out_dir / name / "metrics.jsonl").read_text().splitlines()]
    rl = [m for m in metrics if "rollout/generated_tokens" in m]

    def total(key: str) -> float:
        return float(sum(m.get(key, 0.0) for m in rl))

    return {
        "seed": seed, "wall_s": wall, "command": " ".join(command[3:]),
        "em_before": results["before RL"]["success"], "em_after": results["after RL"]["success"],
        "tool_calls_per_episode_before": results["before RL"].get("mean_tool_calls"),
        "tool_calls_per_episode_after": results["after RL"].get("mean_tool_calls"),
        "generated_tokens": total("rollout/generated_tokens"),
        "tool_calls": total("tools/calls"),
        "trajectories": total("rollout/trajectories"),
        "branches": total("rollout/branches"),
        "results": results,
    }


def mean_se(values: list[float]) -> tuple[float, float]:
    """The mean and its standard error (sample standard deviation / sqrt(n))."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var / len(values))
