"""The demo's learning result for several seeds: held-out metrics before and after RL.

Runs `agentrl demo --task TASK run.seed=S run.name=demo-TASK-seedS` for each seed, one after
another (each run owns the machine; `--jobs N` runs N at once, whose wall times then include
the contention), and writes the before/after metrics and the wall time of
every run to a JSON file and a markdown table (docs/demo.md and docs/demo_search.md keep the
latest results).

    python benchmarks/demo_seeds.py [--task arithmetic] [--seeds 0 1 2] [--out-dir runs/demo-seeds] [--jobs 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

COLUMNS = ("succ@1", "succ@{k}", "unique_answer_ratio", "mean_turns", "mean_return")


def run_seed(task: str, seed: int, out_dir: Path, extra: list[str]) -> dict:
    name = f"demo-{task}-seed{seed}"
    command = [sys.executable, "-m", "agentrl.cli", "demo", "--task", task,
               f"run.seed={seed}", f"run.name={name}", f"run.out_dir={out_dir}", *extra]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - started
    results = json.loads((out_dir / name / "results.json").read_text())
    return {"seed": seed, "wall_s": wall, "command": " ".join(command[2:]), **results}


def markdown(rows: list[dict]) -> str:
    k = rows[0]["k"]
    names = [c.format(k=k) for c in COLUMNS]
    header = "| seed | model | " + " | ".join(names) + " | wall (min) |"
    lines = [header, "|" + "---|" * (len(names) + 3)]
    for row in rows:
        for stage in ("before RL", "after RL"):
            values = " | ".join(f"{row[stage].get(n, float('nan')):.3f}" for n in names)
            wall = f"{row['wall_s'] / 60:.1f}" if stage == "after RL" else ""
            lines.append(f"| {row['seed']} | {stage} | {values} | {wall} |")
    gains = [row["after RL"][f"succ@{k}"] - row["before RL"][f"succ@{k}"] for row in rows]
    lines.append("")
    lines.append(f"Succ@{k} gain after RL: " + ", ".join(f"{g * 100:+.1f} points" for g in gains)
                 + f" (mean {sum(gains) / len(gains) * 100:+.1f}).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="arithmetic")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out-dir", type=Path, default=Path("runs/demo-seeds"))
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at the same time")
    parser.add_argument("overrides", nargs="*", help="section.field=value passed to every run")
    args = parser.parse_args()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = list(pool.map(lambda seed: run_seed(args.task, seed, args.out_dir, args.overrides),
                             args.seeds))
    result_path = args.out_dir / f"demo_{args.task}_seeds.json"
    result_path.write_text(json.dumps(rows, indent=2))
    print(markdown(rows))
    print(f"\nresults: {result_path}")


if __name__ == "__main__":
    main()
