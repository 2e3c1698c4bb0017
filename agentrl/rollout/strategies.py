"""Sampling strategies: who starts, and who branches between rounds.

The engine is round-based: in each round every active episode generates one turn and its env
steps. A strategy is called at two points only:

- `start(tasks, spawn)`: create the initial episodes of every task (`spawn(task_index)` resets a
  fresh env for that task and returns a new episode);
- `after_round(round, spawn)`: look at the turns just taken (each episode with the completion it
  sampled) and return new episodes to add, usually `episode.fork(...)` branches that continue
  from the current point with the shared prefix copied and the env (and its tools) forked.

A third, `refill(failed, spawn)`, is called with the episodes the infrastructure ended (an env
crash, a tool or sandbox failure): those trajectories are never trained on, and the strategy
may spawn replacements so the group keeps its size.

`chain` (G independent rollouts per task) never branches. Tree-GRPO's `tree` and ARPO's
`entropy` strategies plug in here through `after_round` and `Episode.fork`, without changes to
the engine.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

from agentrl.rollout.episode import Episode
from agentrl.types import Completion, SamplingParams

Spawn = Callable[[int], Episode]


class Strategy(Protocol):
    def sampling_params(self, base: SamplingParams) -> SamplingParams:
        """Adjust sampling (e.g. ask for top-k log-probs to measure entropy)."""
        ...

    def start(self, num_tasks: int, spawn: Spawn) -> list[Episode]:
        ...

    def after_round(self, taken: Sequence[tuple[Episode, Completion]], spawn: Spawn) -> list[Episode]:
        ...

    def refill(self, failed: Sequence[Episode], spawn: Spawn) -> list[Episode]:
        """Episodes replacing those the infrastructure ended; [] when the strategy cannot."""
        ...


class ChainStrategy:
    """G independent rollouts per task (GRPO and its family).

    A rollout lost to an infrastructure failure is replaced by a fresh one of the same task,
    at most `max_refills` times per group (default G), so a task whose env always crashes
    cannot keep the rollout going.
    """

    def __init__(self, group_size: int, max_refills: int | None = None) -> None:
        if group_size < 1:
            raise ValueError(f"group_size must be at least 1, got {group_size}")
        self.group_size = group_size
        self.max_refills = group_size if max_refills is None else max_refills
        self._refills: dict[int, int] = {}

    def sampling_params(self, base: SamplingParams) -> SamplingParams:
        return base

    def start(self, num_tasks: int, spawn: Spawn) -> list[Episode]:
        self._refills = {}
        return [spawn(task) for task in range(num_tasks) for _ in range(self.group_size)]

    def refill(self, failed: Sequence[Episode], spawn: Spawn) -> list[Episode]:
        replacements = []
        for episode in failed:
            used = self._refills.get(episode.group_id, 0)
            if used < self.max_refills:
                self._refills[episode.group_id] = used + 1
                replacements.append(spawn(episode.group_id))
        return replacements

    def after_round(self, taken: Sequence[tuple[Episode, Completion]], spawn: Spawn) -> list[Episode]:
        return []


def make_strategy(name: str, *, group_size: int) -> Strategy:
    if name == "chain":
        return ChainStrategy(group_size)
    raise ValueError(f"unknown rollout strategy {name!r}; available: chain")
