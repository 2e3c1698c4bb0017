"""The RL update with and without the shared-prefix forward, on the search demo's rollouts.

A GRPO group's rollouts start with the same prompt; Tree-GRPO's leaves share whole turns at
several depths. With `train.shared_prefix` (the default) the update forwards each distinct
token of a micro-batch's sequences once: a trie per group, forwarded level by level over a
key/value cache (`agentrl.training.shared_prefix`). This benchmark times `RLTrainer._update`
(micro-batches, forward, backward, AdamW) with four ways to forward a micro-batch:

- whole sequences: every sequence forwarded whole (`train.shared_prefix=false`);
- group prefix: each group's longest common prefix once, the rest of every sequence on its
  own (the shared prefix before the trie: `plan_shared_prefixes(..., max_levels=2)`);
- trie: each distinct token once, level by level (the default);
- trie, tree mask: the same tokens in one pass per tree, packed into one sequence with a tree
  attention mask (AReaL's tree training; measured here, not used by the trainer);

each with PyTorch's fused attention kernel (`sdpa`, the model's own, used for sampling) and the
plain one (`train.attention=eager`), on two cases:

- `--case groups`: the search demo (SearchQA, 20 questions x 5 chain rollouts, the demo's
  sampling settings, real EM rewards and advantages, micro-batches of 16);
- `--case trees`: the Tree-GRPO recipe (recipes/searchqa_tree_grpo.yaml: per question M=2
  trees, each one chain and 2 branches from random turns of it, 6 leaves; `tree_grpo`
  advantages; micro-batches of 18).

Rollout batches are sampled once from one model with the trainer's own rollout code; every
side updates on each batch, alternating, each with its own copy of the model and optimizer.
The first update of each side starts from the same weights, so their gradient norms must agree
(up to the kernels' rounding).

    python benchmarks/shared_prefix_update.py [--case trees] [--model runs/warm0/sft_model] [--batches 4] [--repeats 3]
        [--attention sdpa,eager] [--set KEY=VALUE ...]

Without `--model` it builds the demo's tiny model untrained (every episode then runs all 4
turns, its rollouts share little beyond the prompt, and most rewards are 0, so few sequences
are trained unless `--set algorithm.entropy_coef=0.001` makes every sequence count); the
demo's warm-up (`sft_model`) gives its real batches. Writes a JSON result and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch

import agentrl.training.logprobs as logprobs_module
from agentrl.algorithms import token_advantages
from agentrl.config import load_config
from agentrl.models import attention_implementation, load_model
from agentrl.training.demos import demo_overrides
from agentrl.training.rl import RLTrainer
from agentrl.training.run import env_factory
from agentrl.training.shared_prefix import PrefixPlan, plan_shared_prefixes
from agentrl.types import Group, Trajectory

from _common import machine, search_demo_model, write_result

TREE_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "searchqa_tree_grpo.yaml"

#: how each side forwards a micro-batch: (train.shared_prefix, max_levels of the plan, tree mask)
METHODS = {
    "whole sequences": (False, None, False),
    "group prefix": (True, 2, False),
    "trie": (True, None, False),
    "trie, tree mask": (True, None, True),
}


class PlanningTrainer(RLTrainer):
    """The trainer with its shared-prefix plan bounded to `max_levels` forward passes, which
    records how many passes each micro-batch took."""

    def __init__(self, *args, max_levels: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_levels = max_levels
        self.passes: list[int] = []

    def _prefix_plan(self, trajs: list[Trajectory]) -> PrefixPlan | None:
        if not self.config.train.shared_prefix:
            return None
        plan = plan_shared_prefixes([t.token_ids for t in trajs], [t.group_id for t in trajs],
                                    max_levels=self.max_levels)
        self.passes.append(plan.levels if plan else 1)
        return plan


def tree_mask_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     plan: PrefixPlan) -> torch.Tensor:
    """`shared_prefix_logits` the other way (AReaL's tree training): each tree's nodes packed into
    one sequence, parents first, at the positions they have in their rows, in one forward pass
    whose attention mask lets a token see its own node up to itself and its ancestors' nodes.
    The same logits; the cost is a packed sequence's full attention, however little the mask keeps."""
    device = input_ids.device
    tree_of: list[int] = []  # each node's root
    for n, node in enumerate(plan.nodes):
        tree_of.append(n if node.parent is None else tree_of[node.parent])
    packed_row = {root: i for i, root in enumerate(sorted(set(tree_of)))}
    filled = [0] * len(packed_row)
    where = []  # (packed row, first slot) of each node; nodes come depth-ordered, so parents first
    for n, node in enumerate(plan.nodes):
        row = packed_row[tree_of[n]]
        where.append((row, filled[row]))
        filled[row] += node.length
    width = max(filled)
    ids = torch.zeros(len(filled), width, dtype=input_ids.dtype, device=device)
    positions = torch.zeros(len(filled), width, dtype=torch.long, device=device)
    owner = torch.full((len(filled), width), len(plan.nodes))  # each slot's node; the extra one: padding
    for n, node in enumerate(plan.nodes):
        row, at = where[n]
        ids[row, at:at + node.length] = input_ids[node.row, node.start:node.start + node.length]
        positions[row, at:at + node.length] = torch.arange(node.start, node.start + node.length)
        owner[row, at:at + node.length] = n
    sees = torch.eye(len(plan.nodes) + 1, dtype=torch.bool)  # sees[a, b]: b is a or an ancestor of a
    for n, node in enumerate(plan.nodes):
        if node.parent is not None:
            sees[n] |= sees[node.parent]
    allowed = sees[owner[:, :, None], owner[:, None, :]] & torch.ones(width, width, dtype=torch.bool).tril()
    allowed = allowed[:, None].to(device)
    if model.config._attn_implementation == "sdpa":
        mask = allowed  # sdpa takes a boolean mask
    else:  # eager adds the mask to the attention scores
        mask = torch.zeros(allowed.shape, device=device).masked_fill(~allowed, torch.finfo(torch.float32).min)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    index = torch.zeros(input_ids.shape, dtype=torch.long)
    for b, path in enumerate(plan.paths):
        for n in path:
            node = plan.nodes[n]
            row, at = where[n]
            index[b, node.start:node.start + node.length] = torch.arange(row * width + at,
                                                                        row * width + at + node.length)
    return logits.reshape(-1, logits.shape[-1])[index.to(device)]


@contextlib.contextmanager
def forwarding_with(forward) -> Iterator[None]:
    """`token_logprobs` runs `forward` in place of `shared_prefix_logits` inside the block."""
    original = logprobs_module.shared_prefix_logits
    logprobs_module.shared_prefix_logits = forward
    try:
        yield
    finally:
        logprobs_module.shared_prefix_logits = original


def update(trainer: PlanningTrainer, trajs, advantages, tree_mask: bool) -> dict[str, float]:
    """One policy update as `RLTrainer.train_iteration` runs it (with its attention kernel)."""
    forward = tree_mask_logits if tree_mask else logprobs_module.shared_prefix_logits
    with attention_implementation(trainer.model, trainer.config.train.attention), forwarding_with(forward):
        return trainer._update(trajs, advantages)


def case_config(case: str, micro_batch_size: int | None, overrides: list[str] = ()):
    overrides = list(overrides) + ([f"train.micro_batch_size={micro_batch_size}"] if micro_batch_size else [])
    if case == "groups":
        return load_config(None, demo_overrides("search") + overrides)
    return load_config(TREE_RECIPE, overrides)


def sample_batch(trainer: RLTrainer) -> tuple[list[Trajectory], list]:
    """One iteration's rollouts and their advantages, as `RLTrainer.train_iteration` makes them."""
    groups, kept_ids, _ = trainer._rollout_with_filter()
    kept = [Group(g.group_id, g.task, [t for t in g.trajectories if not t.infra_error], g.budget)
            for g in groups if g.group_id in kept_ids]
    algorithm = trainer.config.algorithm
    return [t for g in kept for t in g.trajectories], token_advantages(algorithm.advantage, kept, algorithm)


def run_benchmark(model_path: Path | None, *, case: str, batches: int, repeats: int,
                  micro_batch_size: int | None = None, attentions: tuple[str, ...] = ("sdpa", "eager"),
                  overrides: list[str] = ()) -> dict:
    config = case_config(case, micro_batch_size, overrides)
    make_env = env_factory(config)
    with tempfile.TemporaryDirectory() as tmp:
        model_path, label = search_demo_model(model_path, Path(tmp))
        model, tokenizer = load_model(model_path)
        sides: dict[str, tuple[PlanningTrainer, bool]] = {}
        for attention in attentions:
            for method, (shared, max_levels, tree_mask) in METHODS.items():
                side_config = config.model_copy(deep=True)
                side_config.train.shared_prefix = shared
                side_config.train.attention = attention
                trainer = PlanningTrainer(side_config, Path(tmp) / f"side{len(sides)}", copy.deepcopy(model),
                                          tokenizer, make_env, max_levels=max_levels)
                sides[f"{method}, {attention}"] = (trainer, tree_mask)
        sampler = next(iter(sides.values()))[0]
        rollouts = [sample_batch(sampler) for _ in range(batches)]
        rows: dict[str, list[dict]] = {name: [] for name in sides}
        first_norms = {name: update(side, *rollouts[0], tree_mask)["policy/grad_norm"]
                       for name, (side, tree_mask) in sides.items()}
        for _, (side, _) in sides.items():
            side.passes.clear()
        for _ in range(repeats):
            for trajs, advantages in rollouts:
                for name, (side, tree_mask) in sides.items():
                    started = time.perf_counter()
                    metrics = update(side, trajs, advantages, tree_mask)
                    rows[name].append({"seconds": time.perf_counter() - started,
                                       "trained_sequences": round((1 - metrics["perf/skipped_sequences"]) * len(trajs)),
                                       "shared_tokens": metrics["perf/update_tokens_shared"]})
        passes = {name: statistics.mean(side.passes) if side.passes else 1.0 for name, (side, _) in sides.items()}
        for side, _ in sides.values():
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
            "forward_passes_per_micro_batch": passes[name],
            "first_grad_norm": first_norms[name],
        }
    for name, row in summary.items():
        whole = summary[f"whole sequences, {name.rsplit(', ', 1)[1]}"]
        row["speedup_vs_whole"] = whole["update_s_median"] / row["update_s_median"]
        row["tokens_vs_whole"] = row["tokens_forwarded_mean"] / max(whole["tokens_forwarded_mean"], 1)
    trajectories = [t for trajs, _ in rollouts for t in trajs]
    return {
        "benchmark": "shared_prefix_update",
        "case": case,
        "model": label,
        "trajectories_per_batch": len(trajectories) / batches,
        "turns_mean": statistics.mean(t.num_turns for t in trajectories),
        "tokens_per_trajectory": statistics.mean(len(t.token_ids) for t in trajectories),
        "micro_batch_size": config.train.micro_batch_size,
        "overrides": list(overrides),
        "batches": batches,
        "repeats": repeats,
        "machine": machine(),
        "summary": summary,
        "runs": rows,
    }


def format_table(result: dict) -> str:
    lines = ["| update | seconds per update (median) | speed-up vs whole (same kernel) | tokens forwarded | "
             "vs whole | forward passes per micro-batch | sequences trained | grad norm of the first update |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in result["summary"].items():
        lines.append(f"| {name} | {row['update_s_median']:.3f} | {row['speedup_vs_whole']:.2f} | "
                     f"{row['tokens_forwarded_mean']:,.0f} | {row['tokens_vs_whole']:.2f} | "
                     f"{row['forward_passes_per_micro_batch']:.1f} | {row['trained_sequences_mean']:.1f} | "
                     f"{row['first_grad_norm']:.4f} |")
    lines.append("")
    lines.append(f"Case {result['case']}: {result['batches']} rollout batches of {result['trajectories_per_batch']:.0f} "
                 f"trajectories ({result['tokens_per_trajectory']:.0f} tokens, {result['turns_mean']:.1f} turns on "
                 f"average), each updated {result['repeats']} times per side; micro-batches of "
                 f"{result['micro_batch_size']}; model: {result['model']}"
                 + (f"; overrides: {' '.join(result['overrides'])}." if result.get("overrides") else "."))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=["groups", "trees"], default="groups",
                        help="the search demo's GRPO groups, or Tree-GRPO's trees (recipes/searchqa_tree_grpo.yaml)")
    parser.add_argument("--model", type=Path, default=None, help="a checkpoint (default: untrained tiny)")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--micro-batch-size", type=int, default=None, help="default: the case's recipe")
    parser.add_argument("--attention", default="sdpa,eager", help="update kernels to time, comma-separated")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override (repeatable), e.g. algorithm.entropy_coef=0.001: with an "
                             "entropy bonus every sequence is forwarded, so an untrained model's batches "
                             "(rewards all 0) are timed too")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: runs/bench/shared_prefix_update[_trees].json")
    args = parser.parse_args(argv)
    out = args.out or Path(f"runs/bench/shared_prefix_update{'_trees' if args.case == 'trees' else ''}.json")
    result = run_benchmark(args.model, case=args.case, batches=args.batches, repeats=args.repeats,
                           micro_batch_size=args.micro_batch_size, attentions=tuple(args.attention.split(",")),
                           overrides=args.set)
    write_result(result, format_table(result), out)


if __name__ == "__main__":
    main()
