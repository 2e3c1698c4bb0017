"""Sampling strategies: who starts, who branches between rounds, and which episodes count.

The engine is round-based: in each round every active episode generates one turn and its env
steps. A strategy decides, through the `RolloutContext` it is handed (`rollout.spawn(task)`,
`rollout.branch(episode, at_turn=k)`, see `agentrl.rollout.context`), which episodes to start:

- `start(num_tasks, rollout)`: the initial episodes of every task;
- `refill(failed, rollout)`: replacements for episodes the infrastructure ended (an env crash, a
  tool or sandbox failure, a fork that failed); those are never trained on, and the strategy may
  start replacements so its groups keep their size;
- `after_round(taken, rollout)`: after each round (the episodes that just took a turn, each with
  the completion it sampled), new episodes to start, usually branches;
- `finish(episodes)`: at the end, the episodes of one group that become its trajectories;
- optionally `metrics()`: diagnostics of the last run, logged by the trainer (ARPO's `arpo/`).

Each returns the requests; the engine starts them (concurrently), assigns every id, and keeps
env forks at every node when the strategy sets `keep_node_forks` (of the episodes its optional
`keep_fork(episode)` names: those it may still branch from). `chain` (G independent
rollouts per task) never branches; `tree` (Tree-GRPO, `agentrl.rollout.tree_strategy`) branches
finished episodes at random nodes; `entropy` (ARPO, `agentrl.rollout.entropy_strategy`) branches
live episodes right after a tool result where the model's entropy rose. `make_strategy`
builds one from the recipe's `rollout.strategy` section.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from agentrl.rollout.context import EpisodeRequest, RolloutContext
from agentrl.rollout.entropy_strategy import EntropyStrategy
from agentrl.rollout.episode import Episode
from agentrl.rollout.tree_strategy import TreeStrategy
from agentrl.types import Completion, SamplingParams


class Strategy(Protocol):
    #: whether the engine keeps an env fork after every turn (for branches of finished episodes)
    keep_node_forks: bool

    def sampling_params(self, base: SamplingParams) -> SamplingParams:
        """Adjust sampling (e.g. ask for top-k log-probs to measure entropy)."""
        ...

    def start(self, num_tasks: int, rollout: RolloutContext) -> list[EpisodeRequest]:
        ...

    def refill(self, failed: Sequence[Episode], rollout: RolloutContext) -> list[EpisodeRequest]:
        """Episodes replacing those the infrastructure ended; [] when the strategy cannot."""
        ...

    def after_round(self, taken: Sequence[tuple[Episode, Completion]],
                    rollout: RolloutContext) -> list[EpisodeRequest]:
        ...

    def finish(self, episodes: Sequence[Episode]) -> list[Episode]:
        """The episodes of one group that become its trajectories (the rest are dropped)."""
        ...


class ChainStrategy:
    """G independent rollouts per task (GRPO and its family).

    A rollout lost to an infrastructure failure is replaced by a fresh one of the same task,
    at most `max_refills` times per group (default G), so a task whose env always crashes
    cannot keep the rollout going.
    """

    keep_node_forks = False

    def __init__(self, group_size: int, max_refills: int | None = None) -> None:
        if group_size < 1:
            raise ValueError(f"group_size must be at least 1, got {group_size}")
        self.group_size = group_size
        self.max_refills = group_size if max_refills is None else max_refills
        self._refills: dict[int, int] = {}

    def sampling_params(self, base: SamplingParams) -> SamplingParams:
        return base

    def start(self, num_tasks: int, rollout: RolloutContext) -> list[EpisodeRequest]:
        self._refills = {}
        return [rollout.spawn(task) for task in range(num_tasks) for _ in range(self.group_size)]

    def refill(self, failed: Sequence[Episode], rollout: RolloutContext) -> list[EpisodeRequest]:
        replacements = []
        for episode in failed:
            used = self._refills.get(episode.group_id, 0)
            if used < self.max_refills:
                self._refills[episode.group_id] = used + 1
                replacements.append(rollout.spawn(episode.group_id))
        return replacements

    def after_round(self, taken: Sequence[tuple[Episode, Completion]],
                    rollout: RolloutContext) -> list[EpisodeRequest]:
        return []

    def finish(self, episodes: Sequence[Episode]) -> list[Episode]:
        return list(episodes)


def make_strategy(config: Any, *, group_size: int, vocab_size: int | None = None) -> Any:
    """The strategy a recipe's `rollout.strategy` section names: its `name` (or just a name)
    and its settings (tree: `m`, `n`, `l`, `k`; entropy: `initial`, `n`, `beam`, ...).
    `group_size` is chain's G; `vocab_size` (|V|, the tokenizer's) normalises entropy's step
    entropy."""
    name = config if isinstance(config, str) else config.name
    if name == "chain":
        return ChainStrategy(group_size)
    if name == "tree" and not isinstance(config, str):
        return TreeStrategy(m=config.m, n=config.n, l=config.l, k=config.k)
    if name == "entropy" and not isinstance(config, str):
        if vocab_size is None:
            raise ValueError("the entropy strategy normalises step entropy by log |V|; pass "
                             "make_strategy(..., vocab_size=len(tokenizer))")
        return EntropyStrategy(initial=config.initial, n=config.n, beam=config.beam,
                               vocab_size=vocab_size, p0=config.p0, beta=config.beta,
                               entropy_tokens=config.entropy_tokens,
                               entropy_top_k=config.entropy_top_k,
                               entropy_logprobs=config.entropy_logprobs)
    raise ValueError(f"unknown rollout strategy {name!r}; available: chain, tree, entropy "
                     "(tree and entropy take their settings: rollout.strategy={name: tree, m: 2, "
                     "n: 2, l: 1} or {name: entropy, initial: 8, n: 16, beam: 2})")
