"""Rollouts and training steps with glibc's default heap and with freed memory retained.

`run.retain_freed_memory` (agentrl.training.heap, on by default) tells glibc to keep freed
memory in the heap instead of mapping and faulting in fresh pages for every large tensor. The
setting is per process and cannot be undone, so each measurement runs in its own child
process, the two settings alternating round by round. A child rolls out the search demo's
episodes (16 questions x 4, up to 4 turns, as one RL iteration) and runs SFT steps of 16
oracle episodes (as the warm-up), and reports the median time of each.

    python benchmarks/heap.py [--model runs/search/sft_model] [--rounds 3]

Without `--model` it builds the demo's tiny model untrained; a warm-up model (the demo's
`sft_model`) gives the demo's own episode lengths. Writes a JSON result and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, search_demo_model, write_result

SETTINGS = ("glibc default", "retained")


def measure(model_path: Path, retain: bool, rollouts: int, sft_steps: int) -> dict:
    """One child's figures (runs in the child process)."""
    import torch

    from agentrl.config import load_config
    from agentrl.generation import HFGenerator
    from agentrl.models import load_model, resolve_autocast
    from agentrl.rollout import ChainStrategy, RolloutEngine, collect_demonstrations
    from agentrl.training.demos import demo_overrides
    from agentrl.training.heap import retain_freed_memory
    from agentrl.training.run import env_factory
    from agentrl.training.sft import sft_train
    from agentrl.types import SamplingParams

    applied = retain_freed_memory() if retain else False
    torch.manual_seed(0)
    config = load_config(None, demo_overrides("search"))
    make_env = env_factory(config)
    model, tokenizer = load_model(model_path)
    autocast = resolve_autocast(config.model.autocast, "cpu")
    sampling = SamplingParams(temperature=1.0, max_new_tokens=config.rollout.max_new_tokens, seed=0)
    engine = RolloutEngine(HFGenerator(model, tokenizer, max_batch_size=128, autocast=autocast),
                           tokenizer, sampling, max_total_tokens=config.rollout.max_total_tokens)
    rollout_s = []
    for i in range(rollouts + 1):  # the first warms up kernels and is not counted
        started = time.perf_counter()
        engine.run(make_env, [{"seed": 16 * i + k} for k in range(16)], ChainStrategy(4))
        if i:
            rollout_s.append(time.perf_counter() - started)
    engine.close()

    demos = collect_demonstrations(env_factory(config, demonstrations=True),
                                   range(1_000_000, 1_000_000 + 16 * (sft_steps + 1)), tokenizer,
                                   max_total_tokens=config.rollout.max_total_tokens, seed=0)
    # Times between step callbacks; the first interval (warm-up) is dropped below.
    step_ends = [time.perf_counter()]

    def on_step(step: int, total: int, metrics: dict) -> None:
        step_ends.append(time.perf_counter())

    sft_train(model, tokenizer, demos, batch_size=16, lr=1e-4, autocast=autocast, on_step=on_step)
    step_s = [b - a for a, b in zip(step_ends[1:], step_ends[2:])]
    return {"applied": applied, "rollout_s_median": statistics.median(rollout_s),
            "sft_step_s_median": statistics.median(step_s), "rollout_s": rollout_s, "sft_step_s": step_s}


def run_benchmark(model_path: Path | None, *, rounds: int, rollouts: int, sft_steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model_path, label = search_demo_model(model_path, Path(tmp))
        runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
        for _ in range(rounds):
            for name in SETTINGS:
                child = subprocess.run(
                    [sys.executable, __file__, "--child", str(model_path), "--rollouts", str(rollouts),
                     "--sft-steps", str(sft_steps)] + (["--retain"] if name == "retained" else []),
                    check=True, capture_output=True, text=True)
                runs[name].append(json.loads(child.stdout.strip().splitlines()[-1]))
    summary = {name: {"rollout_s_median": statistics.median(r["rollout_s_median"] for r in rows),
                      "sft_step_s_median": statistics.median(r["sft_step_s_median"] for r in rows),
                      "applied": all(r["applied"] for r in rows)}
               for name, rows in runs.items()}
    default, retained = summary["glibc default"], summary["retained"]
    return {
        "benchmark": "heap",
        "model": label,
        "episodes_per_rollout": 64,
        "rounds": rounds,
        "machine": machine(),
        "summary": summary,
        "speedup_rollout": default["rollout_s_median"] / retained["rollout_s_median"],
        "speedup_sft_step": default["sft_step_s_median"] / retained["sft_step_s_median"],
        "runs": runs,
    }


def format_table(result: dict) -> str:
    lines = ["| heap | rollout of 64 episodes, s (median) | SFT step of 16 episodes, s (median) |",
             "|---|---:|---:|"]
    for name, row in result["summary"].items():
        lines.append(f"| {name} | {row['rollout_s_median']:.2f} | {row['sft_step_s_median']:.3f} |")
    lines.append("")
    lines.append(f"Retaining freed memory: rollout {result['speedup_rollout']:.2f}x, SFT step "
                 f"{result['speedup_sft_step']:.2f}x ({result['rounds']} rounds, each setting in its own process).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="a checkpoint (default: untrained tiny)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rollouts", type=int, default=5)
    parser.add_argument("--sft-steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/heap.json"))
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--retain", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.child, args.retain, args.rollouts, args.sft_steps)))
        return
    result = run_benchmark(args.model, rounds=args.rounds, rollouts=args.rollouts, sft_steps=args.sft_steps)
    write_result(result, format_table(result), args.out)


if __name__ == "__main__":
    main()
