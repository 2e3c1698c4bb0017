"""The RL update with and without the shared-prefix forward, on the search demo's rollouts.

A GRPO group's rollouts start with the same prompt. With `train.shared_prefix` (the default)
the update forwards each group's common prefix once per micro-batch and reuses its keys and
values for every rollout of the group (`agentrl.training.shared_prefix`); without it, every
sequence is forwarded whole. Each is timed with PyTorch's fused attention kernel (`sdpa`, the
model's own, used for sampling) and with the plain one (`train.attention=eager`). This benchmark samples the demo's rollout batches (SearchQA, 20
questions x 5 rollouts, the demo's sampling settings) from one model, keeps their real EM
rewards, and times `RLTrainer._update` (micro-batches, forward, backward, AdamW) on each batch
with the four settings, alternating, each side with its own copy of the model and optimizer. The
first update of each side starts from the same weights, so their gradient norms must agree.

    python benchmarks/shared_prefix_update.py [--model runs/search/sft_model] [--batches 4] [--repeats 3]

Without `--model` it builds the demo's tiny model untrained (every episode then runs all 4
turns and most rewards are 0); the demo's warm-up (`sft_model`) gives its real batches.
Writes a JSON result and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

from agentrl.config import load_config
from agentrl.models import attention_implementation, load_model
from agentrl.training.demos import demo_overrides
from agentrl.training.rl import RLTrainer
from agentrl.training.run import env_factory

from _common import machine, search_demo_model, write_result


def update(trainer: RLTrainer, trajs, advantages) -> dict[str, float]:
    """One policy update as `RLTrainer.train_iteration` runs it (with its attention kernel)."""
    with attention_implementation(trainer.model, trainer.config.train.attention):
        return trainer._update(trajs, advantages)


def run_benchmark(model_path: Path | None, *, batches: int, repeats: int,
                  micro_batch_size: int | None = None) -> dict:
    overrides = [f"train.micro_batch_size={micro_batch_size}"] if micro_batch_size else []
    config = load_config(None, demo_overrides("search") + overrides)
    make_env = env_factory(config)
    with tempfile.TemporaryDirectory() as tmp:
        model_path, label = search_demo_model(model_path, Path(tmp))
        model, tokenizer = load_model(model_path)
        sides = {}
        for shared, attention in ((False, "sdpa"), (False, "eager"), (True, "sdpa"), (True, "eager")):
            name = f"{'shared prefix' if shared else 'whole sequences'}, {attention}"
            side_config = config.model_copy(deep=True)
            side_config.train.shared_prefix = shared
            side_config.train.attention = attention
            sides[name] = RLTrainer(side_config, Path(tmp) / f"side{len(sides)}", copy.deepcopy(model),
                                    tokenizer, make_env)
        # Rollout batches from the starting weights, with the trainer's own rollout code.
        sampler = next(iter(sides.values()))
        rollouts = []
        for _ in range(batches):
            groups, kept_ids, _ = sampler._rollout_with_filter()
            kept = [t for g in groups if g.group_id in kept_ids for t in g.trajectories]
            rollouts.append((kept, sampler._token_advantages(kept)))
        rows: dict[str, list[dict]] = {name: [] for name in sides}
        first_norms = {name: update(side, *rollouts[0])["policy/grad_norm"] for name, side in sides.items()}
        for _ in range(repeats):
            for trajs, advantages in rollouts:
                for name, side in sides.items():
                    started = time.perf_counter()
                    metrics = update(side, trajs, advantages)
                    rows[name].append({"seconds": time.perf_counter() - started,
                                       "trained_sequences": round((1 - metrics["perf/skipped_sequences"]) * len(trajs)),
                                       "shared_tokens": metrics["perf/update_tokens_shared"]})
        for side in sides.values():
            side.engine.close()
            side.logger.close()
    tokens = [sum(len(t.token_ids) for t, a in zip(trajs, sampler._needs_forward(trajs, advantages)) if a)
              for trajs, advantages in rollouts]
    summary = {}
    for name, entries in rows.items():
        summary[name] = {
            "update_s_median": statistics.median(r["seconds"] for r in entries),
            "trained_sequences_mean": statistics.mean(r["trained_sequences"] for r in entries),
            "tokens_forwarded_mean": statistics.mean(tokens) - statistics.mean(r["shared_tokens"] for r in entries),
            "first_grad_norm": first_norms[name],
        }
    base = summary["whole sequences, sdpa"]["update_s_median"]
    for row in summary.values():
        row["speedup"] = base / row["update_s_median"]
    return {
        "benchmark": "shared_prefix_update",
        "model": label,
        "episodes_per_batch": config.rollout.tasks_per_iteration * config.rollout.group_size,
        "micro_batch_size": config.train.micro_batch_size,
        "batches": batches,
        "repeats": repeats,
        "machine": machine(),
        "summary": summary,
        "runs": rows,
    }


def format_table(result: dict) -> str:
    lines = ["| update | seconds per update (median) | speed-up | sequences trained | tokens forwarded | "
             "grad norm of the first update |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, row in result["summary"].items():
        lines.append(f"| {name} | {row['update_s_median']:.3f} | {row['speedup']:.2f} | "
                     f"{row['trained_sequences_mean']:.1f} | {row['tokens_forwarded_mean']:.0f} | "
                     f"{row['first_grad_norm']:.4f} |")
    lines.append("")
    lines.append(f"{result['batches']} rollout batches of {result['episodes_per_batch']} episodes, "
                 f"each updated {result['repeats']} times per side; micro-batches of "
                 f"{result['micro_batch_size']}; model: {result['model']}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="a checkpoint (default: untrained tiny)")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--micro-batch-size", type=int, default=None, help="default: the demo's")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/shared_prefix_update.json"))
    args = parser.parse_args(argv)
    result = run_benchmark(args.model, batches=args.batches, repeats=args.repeats,
                           micro_batch_size=args.micro_batch_size)
    write_result(result, format_table(result), args.out)


if __name__ == "__main__":
    main()
