"""Multi-turn rollouts with and without the HF generator's prefix cache and shared prefill.

Every turn of a multi-turn episode sends the generator the whole conversation so far. Without
the prefix cache each turn prefills all of it again; with it (`HFGenerator.prefix_cache`, which
the rollout engine opens for every run) a turn prefills only what the env appended since the
episode's last completion. On top of it, shared prefill (`share_identical_prompts`) computes
the G identical first prompts of a GRPO group once. This benchmark rolls out the search demo's
episodes (SearchQA, a new world per episode, up to 4 turns) with the same model three times
per repeat (nothing, the prefix cache, both: the generator's default) and reports the median
rollout time of each and its speed-up over the first, with the prompt tokens that were
prefilled and those that were not.

    python benchmarks/prefix_cache.py [--model runs/search/sft_model] [--tasks 20] [--group-size 5]

Without `--model` it builds the demo's tiny model untrained (its actions are mostly invalid,
so every episode runs all 4 turns); a warm-up model (the demo's `sft_model`) gives the
demo's own episode lengths. Writes a JSON result and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from agentrl.config import load_config
from agentrl.generation import HFGenerator
from agentrl.models import load_model, resolve_autocast
from agentrl.rollout import ChainStrategy, RolloutEngine
from agentrl.training.demos import demo_overrides
from agentrl.training.run import env_factory
from agentrl.types import SamplingParams

from _common import machine, search_demo_model, write_result


def run_benchmark(model_path: Path | None, *, tasks: int, group_size: int, repeats: int) -> dict:
    config = load_config(None, demo_overrides("search"))
    make_env = env_factory(config)
    with tempfile.TemporaryDirectory() as tmp:
        model_path, label = search_demo_model(model_path, Path(tmp))
        model, tokenizer = load_model(model_path)
    autocast = resolve_autocast(config.model.autocast, "cpu")
    sampling = SamplingParams(temperature=1.0, max_new_tokens=config.rollout.max_new_tokens, seed=0)
    # The last setting is the generator's default; the others turn parts of it off.
    settings = (("off", {"prefix_cache_tokens": 0, "share_identical_prompts": False}),
                ("prefix cache", {"share_identical_prompts": False}),
                ("prefix cache + shared prefill", {}))
    engines = {
        name: RolloutEngine(HFGenerator(model, tokenizer, max_batch_size=128, autocast=autocast, **extra),
                            tokenizer, sampling, max_total_tokens=config.rollout.max_total_tokens)
        for name, extra in settings
    }
    runs: dict[str, list[dict]] = {name: [] for name in engines}
    # Repeat 0 warms up kernels and allocator and is not counted.
    for repeat in range(repeats + 1):
        seeds = [{"seed": repeat * tasks + i} for i in range(tasks)]
        for name, engine in engines.items():
            started = time.perf_counter()
            groups = engine.run(make_env, seeds, ChainStrategy(group_size))
            seconds = time.perf_counter() - started
            if repeat == 0:
                continue
            budget = {key: sum(g.budget.get(key, 0.0) for g in groups)
                      for key in ("time/generate", "tokens/generated", "tokens/prompt_processed",
                                  "tokens/prompt_cached")}
            turns = sum(t.num_turns for g in groups for t in g.trajectories)
            runs[name].append({"seconds": seconds, "turns": turns, **budget})
    for engine in engines.values():
        engine.close()

    summary = {}
    for name, rows in runs.items():
        summary[name] = {
            "rollout_s_median": statistics.median(r["seconds"] for r in rows),
            "generate_s_median": statistics.median(r["time/generate"] for r in rows),
            "prompt_tokens_prefilled_mean": statistics.mean(r["tokens/prompt_processed"] for r in rows),
            "prompt_tokens_cached_mean": statistics.mean(r["tokens/prompt_cached"] for r in rows),
            "turns_mean": statistics.mean(r["turns"] for r in rows),
        }
    for row in summary.values():
        row["speedup_rollout"] = summary["off"]["rollout_s_median"] / row["rollout_s_median"]
        row["speedup_generate"] = summary["off"]["generate_s_median"] / row["generate_s_median"]
    return {
        "benchmark": "prefix_cache",
        "model": label,
        "episodes_per_rollout": tasks * group_size,
        "repeats": repeats,
        "machine": machine(),
        "summary": summary,
        "runs": runs,
    }


def format_table(result: dict) -> str:
    lines = ["| setting | rollout s (median) | generate s (median) | speed-up (rollout / generate) | "
             "prompt tokens prefilled | prompt tokens not prefilled | turns |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in result["summary"].items():
        lines.append(f"| {name} | {row['rollout_s_median']:.2f} | {row['generate_s_median']:.2f} | "
                     f"{row['speedup_rollout']:.2f} / {row['speedup_generate']:.2f} | "
                     f"{row['prompt_tokens_prefilled_mean']:.0f} | {row['prompt_tokens_cached_mean']:.0f} | "
                     f"{row['turns_mean']:.0f} |")
    lines.append("")
    lines.append(f"{result['episodes_per_rollout']} episodes per rollout, {result['repeats']} repeats.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="a checkpoint (default: untrained tiny)")
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--group-size", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/prefix_cache.json"))
    args = parser.parse_args(argv)
    result = run_benchmark(args.model, tasks=args.tasks, group_size=args.group_size, repeats=args.repeats)
    write_result(result, format_table(result), args.out)


if __name__ == "__main__":
    main()
