"""What the learning comparisons share: one RL run from a saved SFT checkpoint, and mean ± SE.

Each run is `agentrl train RECIPE [settings]` in its own process, from the given SFT model
(`sft.demos=0`), with held-out evaluation before and after RL; the row holds the figures a
comparison reports: held-out success before and after, tool calls per held-out episode, and
the training budget spent (generated tokens, tool calls, trajectories) from metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable


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


def compare(description: str, arms: list[str], run_arm: Callable[..., dict], markdown: Callable[[list[dict]], str],
            *, name: str, iterations: int) -> None:
    """The command line of a learning comparison: run every (arm, seed) from one SFT checkpoint,
    `--jobs` at a time, write `<out-dir>/<name>.json` and print `markdown(rows)`; or, with
    `--table RESULT.json`, only print the table of a saved result."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft", type=Path, help="the SFT checkpoint every arm starts from")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=arms, choices=arms)
    parser.add_argument("--iterations", type=int, default=iterations)
    parser.add_argument("--jobs", type=int, default=2, help="runs at the same time")
    parser.add_argument("--out-dir", type=Path, default=Path("runs") / name)
    parser.add_argument("--table", type=Path, help="only print the table of a saved result JSON")
    parser.add_argument("overrides", nargs="*", help="section.field=value passed to every run")
    args = parser.parse_args()
    if args.table is not None:
        print(markdown(json.loads(args.table.read_text())["runs"]))
        return
    if args.sft is None:
        parser.error("--sft is required (the SFT checkpoint every arm starts from)")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(arm, seed) for seed in args.seeds for arm in args.arms]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = list(pool.map(lambda job: run_arm(job[0], job[1], args.sft, args.iterations,
                                                 args.out_dir, args.overrides), jobs))
    out = args.out_dir / f"{name}.json"
    out.write_text(json.dumps({"iterations": args.iterations, "sft": str(args.sft), "runs": rows}, indent=2))
    print(markdown(rows))
    print(f"\nresults: {out}")
