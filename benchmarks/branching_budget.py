"""What branched sampling buys per generated token: chain against Tree-GRPO trees on SearchQA.

Rolls out the same SearchQA questions (the search demo's env: a new world per question, up to
4 turns) with the rollout engine and the HF generator, once per strategy:

- `chain`: G = 4 independent rollouts per question (GRPO);
- `tree (2,2,1)`: Tree-GRPO's reference setting, 2 trees of 1 chain + 1 round of 2 branches;
- a larger tree, `(2,4,2)`: 2 trees of 1 chain + 2 rounds of 4 branches (9 leaves per tree).

Since generated tokens are the budget, everything is reported per generated token or per
trajectory: trajectories per 1k generated tokens (the paper's figure: 1.5x the chains' at
(2,2,1)), prompt tokens prefilled per trajectory (the prefix cache serves every branch of a
node), searches executed per trajectory (branches inherit their prefix's results), env steps,
wall seconds per trajectory, and the update's tokens forwarded per trajectory: a plain forward
of every leaf against the trie update (`train.shared_prefix`, each distinct token of a
micro-batch once). The same question seeds and sampling seed for every strategy.

    python benchmarks/branching_budget.py [--model runs/search/sft_model] [--tasks 40]

Without `--model` it builds the demo's tiny model untrained (mostly invalid actions, every
episode 4 turns); the warm-up model (the demo's `sft_model`) gives the demo's own episodes.
Writes a JSON result and prints a table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from agentrl.config import load_config
from agentrl.generation import HFGenerator
from agentrl.models import load_model, resolve_autocast
from agentrl.rollout import ChainStrategy, RolloutEngine
from agentrl.rollout.tree_strategy import TreeStrategy
from agentrl.training.batch import family_micro_batches
from agentrl.training.demos import demo_overrides
from agentrl.training.run import env_factory
from agentrl.training.shared_prefix import plan_shared_prefixes
from agentrl.types import SamplingParams

from _common import machine, search_demo_model, write_result

STRATEGIES = {
    "chain G=4": lambda: ChainStrategy(4),
    "tree (2,2,1)": lambda: TreeStrategy(m=2, n=2, l=1),
    "tree (2,4,2)": lambda: TreeStrategy(m=2, n=4, l=2),
}


def update_tokens(trajectories, micro_batch_size: int) -> tuple[int, int]:
    """Tokens a plain forward of every trajectory computes, and those the trie update computes,
    with the trainer's micro-batches (a group's leaves kept together)."""
    lengths = [len(t.token_ids) for t in trajectories]
    chunks = family_micro_batches(list(range(len(trajectories))), lengths,
                                  [t.group_id for t in trajectories], micro_batch_size)
    plain = trie = 0
    for chunk in chunks:
        rows = [trajectories[i] for i in chunk]
        tokens = sum(len(t.token_ids) for t in rows)
        plan = plan_shared_prefixes([t.token_ids for t in rows], [t.group_id for t in rows])
        plain += tokens
        trie += tokens - (plan.saved_tokens if plan is not None else 0)
    return plain, trie


def measure(name: str, model, tokenizer, make_env, tasks: int, autocast, micro_batch_size: int) -> dict:
    generator = HFGenerator(model, tokenizer, autocast=autocast)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=12, seed=1234)
    with RolloutEngine(generator, tokenizer, sampling, max_total_tokens=384) as engine:
        started = time.perf_counter()
        groups = engine.run(make_env, [{"seed": 50_000 + i} for i in range(tasks)], STRATEGIES[name]())
        wall = time.perf_counter() - started
    trajectories = [t for g in groups for t in g.trajectories]
    budget: dict[str, float] = {}
    for group in groups:
        for key, value in group.budget.items():
            budget[key] = budget.get(key, 0.0) + value
    plain, trie = update_tokens(trajectories, micro_batch_size)
    n = len(trajectories)
    generated = budget["tokens/generated"]
    return {
        "strategy": name,
        "trajectories": n,
        "generated_tokens": generated,
        "trajectories_per_1k_generated_tokens": 1000 * n / generated,
        "prompt_tokens_prefilled_per_trajectory": budget["tokens/prompt_processed"] / n,
        "prompt_tokens_cached_per_trajectory": budget["tokens/prompt_cached"] / n,
        "searches_per_trajectory": budget["tool_calls"] / n,
        "env_steps_per_trajectory": budget["env_steps"] / n,
        "turns_per_trajectory": sum(t.num_turns for t in trajectories) / n,
        "wall_s_per_trajectory": wall / n,
        "wall_s": wall,
        "update_tokens_plain_per_trajectory": plain / n,
        "update_tokens_trie_per_trajectory": trie / n,
        "success_rate": sum(t.success for t in trajectories) / n,
    }


def table(rows: list[dict]) -> str:
    base = rows[0]
    lines = ["| strategy | trajectories per 1k gen. tokens | vs chain | prompt tokens prefilled / traj. "
             "| searches / traj. | env steps / traj. | wall ms / traj. | update tokens / traj. (plain -> trie) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ratio = row["trajectories_per_1k_generated_tokens"] / base["trajectories_per_1k_generated_tokens"]
        lines.append(
            f"| {row['strategy']} | {row['trajectories_per_1k_generated_tokens']:.2f} | {ratio:.2f}x "
            f"| {row['prompt_tokens_prefilled_per_trajectory']:.0f} | {row['searches_per_trajectory']:.2f} "
            f"| {row['env_steps_per_trajectory']:.2f} | {1000 * row['wall_s_per_trajectory']:.0f} "
            f"| {row['update_tokens_plain_per_trajectory']:.0f} -> {row['update_tokens_trie_per_trajectory']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="default: the demo's tiny model, untrained")
    parser.add_argument("--tasks", type=int, default=40, help="questions per strategy")
    parser.add_argument("--micro-batch-size", type=int, default=18)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/branching_budget.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    config = load_config(None, demo_overrides("search"))
    make_env = env_factory(config)
    with tempfile.TemporaryDirectory() as folder:
        path, label = search_demo_model(args.model, Path(folder))
        model, tokenizer = load_model(path)
        autocast = resolve_autocast(config.model.autocast, next(model.parameters()).device)
        rows = [measure(name, model, tokenizer, make_env, args.tasks, autocast, args.micro_batch_size)
                for name in STRATEGIES]
    result = {"model": label, "tasks": args.tasks, "machine": machine(), "rows": rows}
    write_result(result, table(rows), args.out)


if __name__ == "__main__":
    main()
