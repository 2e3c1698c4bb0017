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

`--workload tree` instead grows rollout trees the way Tree-GRPO does (see
`agentrl.rollout.tree_strategy`), calling the generator directly as the rollout engine would:
per task, `--trees` chains of `--turns` turns, then `--branches` branches per tree, each from a
node drawn uniformly from the prompt and the tree's non-leaf turns, run in later calls to the
same number of turns. Observations are synthetic (about 70 tokens that depend on the action,
so that branches differ). It compares the prefix cache as it is (every branch of a node finds
it, in any later call) with the one before it, reproduced below (`EntriesRemovedOnUse`: an
entry left the cache once a prompt continued it, so a branch of a finished episode found
nothing of its node), and with no prefix cache; the same seeds give every setting the same
trees.

    python benchmarks/prefix_cache.py --workload tree [--tasks 8] [--trees 2] [--turns 3] [--branches 2]

Without `--model` it builds the demo's tiny model untrained (its actions are mostly invalid,
so every episode runs all 4 turns); a warm-up model (the demo's `sft_model`) gives the
demo's own episode lengths. Writes a JSON result and prints a table.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from transformers import DynamicCache

from agentrl.config import load_config
from agentrl.generation import HFGenerator
from agentrl.generation.prefix_tree import NO_PREFIX, CachedPrefix
from agentrl.generation.seeding import derive_seed
from agentrl.models import load_model, resolve_autocast
from agentrl.rollout import ChainStrategy, RolloutEngine
from agentrl.training.demos import demo_overrides
from agentrl.training.run import env_factory
from agentrl.types import SamplingParams

from _common import machine, search_demo_model, write_result


def run_chains_benchmark(model_path: Path | None, *, tasks: int, group_size: int, repeats: int) -> dict:
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


def format_chains_table(result: dict) -> str:
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


# --- tree-shaped rollouts, through the generator directly ---------------------------------


class EntriesRemovedOnUse(HFGenerator):
    """The prefix cache before branches were served: whole sequences as entries, found only
    where a prompt continues one whole, and removed once one does (about one entry per live
    episode). Reproduced here for the comparison only."""

    @contextmanager
    def prefix_cache(self) -> Iterator[HFGenerator]:
        self._entries: OrderedDict[tuple[int, ...], list] = OrderedDict()
        self._entry_tokens = 0
        with super().prefix_cache():
            yield self

    @property
    def cached_prefix_tokens(self) -> int:
        return self._entry_tokens if self._prefixes is not None else 0

    def _lookup_all(self, prompts: list[list[int]]) -> list[CachedPrefix]:
        if self._prefixes is None or not self._entries:
            return [NO_PREFIX] * len(prompts)
        lengths = sorted({len(key) for key in self._entries}, reverse=True)
        found, used = [], set()
        for prompt in prompts:
            hit = NO_PREFIX
            for length in lengths:
                key = tuple(prompt[:length])
                if length < len(prompt) and key in self._entries:
                    used.add(key)
                    hit = CachedPrefix(length, (self._entries[key],))
                    break
            found.append(hit)
        for key in used:
            del self._entries[key]
            self._entry_tokens -= len(key)
        return found

    def _remember(self, sequence: list[int], cache: DynamicCache, attention_mask: torch.Tensor, j: int) -> None:
        if len(sequence) > self.prefix_cache_tokens:
            return
        real = attention_mask[j].nonzero().squeeze(-1)
        key = tuple(sequence)
        if key in self._entries:
            self._entry_tokens -= len(key)
        self._entries[key] = [(layer.keys[j][:, real], layer.values[j][:, real]) for layer in cache.layers]
        self._entry_tokens += len(key)
        while self._entry_tokens > self.prefix_cache_tokens:
            oldest, _ = self._entries.popitem(last=False)
            self._entry_tokens -= len(oldest)


#: Words the synthetic observations are made of (the tiny tokenizer knows them from the corpus).
OBSERVATION_WORDS = ("search", "python", "result", "answer", "the", "is", "page", "title",
                     "found", "no", "match", "for", "query", "text", "of", "a")


@dataclass
class TreeEpisode:
    """One trajectory of a tree: its whole context so far and the turns it holds."""

    task: int
    tree: int
    index: int  # unique within the task
    context: list[int]
    #: per turn: its node id and the context length after its observation
    nodes: list[tuple[int, int]] = field(default_factory=list)


def observation(tok, action: list[int], words: int) -> list[int]:
    """A tool result that depends on the action (so branches differ), then the next turn's
    assistant header."""
    rng = random.Random(derive_seed(*action))
    text = " ".join(rng.choice(OBSERVATION_WORDS) for _ in range(words))
    return tok.encode(f"\n<|im_start|>user\n<result>{text}</result><|im_end|>\n<|im_start|>assistant\n",
                      add_special_tokens=False)


def grow_trees(generator: HFGenerator, tok, prompts: list[list[int]], sampling: SamplingParams, *,
               trees: int, turns: int, branches: int, rounds: int, observation_words: int,
               seed: int) -> dict:
    """Sample `trees` trees per prompt: chains first, then `rounds` expansion rounds of
    `branches` branches per tree, every live episode of a round in one generate call."""
    calls = {"prompt_tokens": 0, "prompt_tokens_cached": 0, "generate_s": 0.0, "peak_cached_tokens": 0}
    next_node = [1] * len(prompts)  # per task; node 0 is the prompt
    next_index = [trees] * len(prompts)  # per task; the chains are 0..trees-1

    def run(episodes: list[TreeEpisode]) -> None:
        """Step every episode, one generate call per turn, until each holds `turns` turns."""
        live = [e for e in episodes if len(e.nodes) < turns]
        while live:
            seeds = [derive_seed(seed, e.task, e.index, len(e.nodes)) for e in live]
            started = time.perf_counter()
            completions = generator.generate([e.context for e in live], sampling, seeds=seeds)
            calls["generate_s"] += time.perf_counter() - started
            calls["peak_cached_tokens"] = max(calls["peak_cached_tokens"], generator.cached_prefix_tokens)
            for episode, completion in zip(live, completions):
                calls["prompt_tokens"] += len(episode.context)
                calls["prompt_tokens_cached"] += completion.prompt_cached_tokens
                episode.context = (episode.context + completion.token_ids
                                   + observation(tok, completion.token_ids, observation_words))
                episode.nodes.append((next_node[episode.task], len(episode.context)))
                next_node[episode.task] += 1
            live = [e for e in live if len(e.nodes) < turns]

    episodes = [TreeEpisode(task, tree, tree, list(prompt))
                for task, prompt in enumerate(prompts) for tree in range(trees)]
    with generator.prefix_cache():
        run(episodes)
        for round_ in range(rounds):
            new = []
            for task, prompt in enumerate(prompts):
                for tree in range(trees):
                    members = [e for e in episodes if e.task == task and e.tree == tree]
                    # {root} + non-leaf nodes, each once, with an episode that holds it
                    candidates: dict[int, tuple[TreeEpisode, int]] = {0: (members[0], 0)}
                    for episode in members:
                        for depth, (node, _) in enumerate(episode.nodes[:-1], start=1):
                            candidates.setdefault(node, (episode, depth))
                    rng = random.Random(derive_seed(seed, task, tree, round_))
                    nodes = sorted(candidates)
                    for _ in range(branches):
                        source, depth = candidates[nodes[rng.randrange(len(nodes))]]
                        end = source.nodes[depth - 1][1] if depth else len(prompt)
                        new.append(TreeEpisode(task, tree, next_index[task], source.context[:end],
                                               source.nodes[:depth]))
                        next_index[task] += 1
            run(new)
            episodes += new
    return {**calls, "trajectories": len(episodes), "contexts": [e.context for e in episodes]}


def task_prompts(tok, tasks: int) -> list[list[int]]:
    """One first prompt per task: a system prompt and a question, as the search demo sends."""
    system = ("You answer questions by searching. Write <search>query</search> to search and "
              "<answer>text</answer> to answer.")
    return [tok.encode(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nQuestion {task}: "
                       f"what is the title of page {task * 7 % 23}?<|im_end|>\n<|im_start|>assistant\n",
                       add_special_tokens=False)
            for task in range(tasks)]


def run_tree_benchmark(model_path: Path | None, *, tasks: int, trees: int, turns: int, branches: int,
                       rounds: int, observation_words: int, repeats: int) -> dict:
    config = load_config(None, demo_overrides("search"))
    with tempfile.TemporaryDirectory() as tmp:
        model_path, label = search_demo_model(model_path, Path(tmp))
        model, tokenizer = load_model(model_path)
    autocast = resolve_autocast(config.model.autocast, "cpu")
    sampling = SamplingParams(temperature=1.0, max_new_tokens=config.rollout.max_new_tokens)
    settings = {
        "no prefix cache": HFGenerator(model, tokenizer, max_batch_size=128, autocast=autocast,
                                       prefix_cache_tokens=0),
        "entries removed on use (before)": EntriesRemovedOnUse(model, tokenizer, max_batch_size=128,
                                                               autocast=autocast),
        "every branch served (now)": HFGenerator(model, tokenizer, max_batch_size=128, autocast=autocast),
    }
    prompts = task_prompts(tokenizer, tasks)
    runs: dict[str, list[dict]] = {name: [] for name in settings}
    # Repeat 0 warms up kernels and allocator and is not counted.
    for repeat in range(repeats + 1):
        reference = None
        for name, generator in settings.items():
            row = grow_trees(generator, tokenizer, prompts, sampling, trees=trees, turns=turns,
                             branches=branches, rounds=rounds, observation_words=observation_words,
                             seed=repeat)
            contexts = row.pop("contexts")
            reference = reference or contexts
            # Same seeds, same trees, up to sampling flips from rounding (cached keys and values
            # were computed in other batches)
            row["trajectories_as_without_cache"] = sum(a == b for a, b in zip(contexts, reference))
            if repeat:
                runs[name].append(row)

    per_token_bytes = _kv_bytes_per_token(model, autocast)
    summary = {}
    for name, rows in runs.items():
        trajectories = rows[0]["trajectories"]
        prefilled = [r["prompt_tokens"] - r["prompt_tokens_cached"] for r in rows]
        summary[name] = {
            "generate_s_median": statistics.median(r["generate_s"] for r in rows),
            "prompt_tokens_per_trajectory": statistics.mean(r["prompt_tokens"] for r in rows) / trajectories,
            "prefilled_per_trajectory": statistics.mean(prefilled) / trajectories,
            "peak_cached_tokens": max(r["peak_cached_tokens"] for r in rows),
            "peak_cache_mib": max(r["peak_cached_tokens"] for r in rows) * per_token_bytes / 2**20,
            "trajectories_as_without_cache": statistics.mean(r["trajectories_as_without_cache"] for r in rows),
            "trajectories": trajectories,
        }
    base = summary["no prefix cache"]
    for row in summary.values():
        row["speedup_generate"] = base["generate_s_median"] / row["generate_s_median"]
    return {
        "benchmark": "prefix_cache_tree",
        "model": label,
        "tasks": tasks, "trees": trees, "turns": turns, "branches": branches, "rounds": rounds,
        "observation_words": observation_words,
        "new_tokens_per_turn": sampling.max_new_tokens,
        "repeats": repeats,
        "machine": machine(),
        "summary": summary,
        "runs": runs,
    }


def _kv_bytes_per_token(model, autocast: torch.dtype | None) -> int:
    """Bytes of one position's keys and values over all layers (in the dtype the cache holds)."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    itemsize = (autocast or next(model.parameters()).dtype).itemsize
    return 2 * config.num_hidden_layers * kv_heads * head_dim * itemsize


def format_tree_table(result: dict) -> str:
    lines = ["| prefix cache | generate s (median) | speed-up | prompt tokens per trajectory | "
             "prefilled per trajectory | peak cache tokens (MiB) | trajectories as without cache |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in result["summary"].items():
        lines.append(f"| {name} | {row['generate_s_median']:.2f} | {row['speedup_generate']:.2f} | "
                     f"{row['prompt_tokens_per_trajectory']:.0f} | {row['prefilled_per_trajectory']:.0f} | "
                     f"{row['peak_cached_tokens']:,} ({row['peak_cache_mib']:.1f}) | "
                     f"{row['trajectories_as_without_cache']:.1f} / {row['trajectories']} |")
    lines.append("")
    lines.append(f"{result['tasks']} tasks x {result['trees']} trees, {result['turns']} turns, "
                 f"{result['rounds']} round(s) of {result['branches']} branches per tree; "
                 f"{result['repeats']} repeats.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=("chains", "tree"), default="chains",
                        help="GRPO chains through RolloutEngine, or Tree-GRPO trees through the generator")
    parser.add_argument("--model", type=Path, default=None, help="a checkpoint (default: untrained tiny)")
    parser.add_argument("--tasks", type=int, default=None, help="default: 20 (chains), 8 (tree)")
    parser.add_argument("--group-size", type=int, default=5, help="chains: rollouts per task")
    parser.add_argument("--trees", type=int, default=2, help="tree: trees per task")
    parser.add_argument("--turns", type=int, default=3, help="tree: turns of every trajectory")
    parser.add_argument("--branches", type=int, default=2, help="tree: branches per tree and round")
    parser.add_argument("--rounds", type=int, default=1, help="tree: expansion rounds")
    parser.add_argument("--observation-words", type=int, default=24, help="tree: words per tool result")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None,
                        help="default: runs/bench/prefix_cache.json (chains), prefix_cache_tree.json (tree)")
    args = parser.parse_args(argv)
    if args.workload == "chains":
        result = run_chains_benchmark(args.model, tasks=args.tasks or 20, group_size=args.group_size,
                                      repeats=args.repeats)
        table = format_chains_table(result)
    else:
        result = run_tree_benchmark(args.model, tasks=args.tasks or 8, trees=args.trees, turns=args.turns,
                                    branches=args.branches, rounds=args.rounds,
                                    observation_words=args.observation_words, repeats=args.repeats)
        table = format_tree_table(result)
    out = args.out or Path(f"runs/bench/{result['benchmark']}.json")
    write_result(result, table, out)


if __name__ == "__main__":
    main()
