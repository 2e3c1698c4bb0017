"""What a sampling strategy sees of a running rollout, and the episodes it asks for.

A strategy never builds an episode itself. It asks the `RolloutContext` for one:

    rollout.spawn(task)                 # a fresh rollout of the task, in a tree of its own
    rollout.spawn(task, tree_id=t)      # a fresh rollout that belongs to tree t
    rollout.branch(episode, at_turn=k)  # continue `episode` (live or finished) after turn k

and returns those requests; the engine starts them all concurrently (env resets, env forks and
replays run in its thread pool, like steps). The engine, not the strategy, assigns trajectory
ids, tree ids and node ids, so they cannot collide. A branch copies the parent's first k turns
exactly (tokens, loss mask, log-probs) and gets an env in the state after turn k: a fork the
engine kept at that node (strategies that branch from finished episodes set
`keep_node_forks = True`), a fork of the live env, or, for an env whose `fork()` raises
`EnvForkError`, a replay of the k actions on a fresh env (counted as a replayed branch, and
checked: a replay that does not reproduce the parent's observations is an error).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from agentrl.generation.seeding import derive_seed
from agentrl.rollout.episode import Episode


class BranchError(RuntimeError):
    """A branch that cannot be made exactly (an env that neither forks nor replays the same)."""


@dataclass(frozen=True)
class EpisodeRequest:
    """A new episode for the engine to start: fresh (`source` None) or a branch of `source`
    after its turn `at_turn`."""

    group_id: int
    traj_id: int
    tree_id: int
    source: Episode | None = None
    at_turn: int = 0


class RolloutContext:
    """One `RolloutEngine.run`'s bookkeeping, and the strategy's handle on it.

    `seed` is the rollout's sampling seed (None: unseeded); `rng(*key)` gives a strategy a
    random generator for its decisions that the seed fixes (same seed, same branches).
    """

    def __init__(self, num_tasks: int, seed: int | None) -> None:
        self.num_tasks = num_tasks
        self.seed = seed
        self._started: list[Episode] = []
        self._next_traj: dict[int, int] = defaultdict(int)
        self._next_tree: dict[int, int] = defaultdict(int)
        self._next_node: dict[int, int] = defaultdict(lambda: 1)  # node 0 is the prompt (root)
        #: (group id, node id) -> an env in the state right after that node's turn
        self.node_forks: dict[tuple[int, int], Any] = {}

    # --- for strategies ----------------------------------------------------------------------

    def spawn(self, task_index: int, tree_id: int | None = None) -> EpisodeRequest:
        """A fresh rollout of task `task_index`; in a new tree unless `tree_id` is given."""
        if not 0 <= task_index < self.num_tasks:
            raise ValueError(f"task {task_index} does not exist; this rollout has tasks "
                             f"0..{self.num_tasks - 1}")
        if tree_id is None:
            tree_id = self._next_tree[task_index]
        self._next_tree[task_index] = max(self._next_tree[task_index], tree_id + 1)
        return EpisodeRequest(task_index, self._new_traj_id(task_index), tree_id)

    def branch(self, episode: Episode, at_turn: int) -> EpisodeRequest:
        """A new episode continuing `episode` after its turn `at_turn` (0 = from the prompt),
        in the same tree. `episode` may be live or finished."""
        if not 0 <= at_turn <= episode.turns or (at_turn == episode.turns and episode.done):
            last = episode.turns - 1 if episode.done else episode.turns
            raise ValueError(f"branch(at_turn={at_turn}): episode {episode.group_id}/"
                             f"{episode.traj_id} has {episode.turns} turn(s) and is "
                             f"{'finished' if episode.done else 'live'}; branch at a turn in 0..{last}")
        return EpisodeRequest(episode.group_id, self._new_traj_id(episode.group_id), episode.tree_id,
                              episode, at_turn)

    def episodes(self, group_id: int | None = None) -> list[Episode]:
        """Every episode started so far (live, finished and failed), in order; only group
        `group_id`'s when it is given."""
        return [e for e in self._started if group_id is None or e.group_id == group_id]

    def rng(self, *key: int) -> random.Random:
        """A random generator for a strategy decision named by `key`, fixed by the seed."""
        return random.Random(derive_seed(self.seed if self.seed is not None else 0, *key))

    # --- for the engine ----------------------------------------------------------------------

    def add(self, episode: Episode) -> None:
        self._started.append(episode)

    def new_node(self, group_id: int) -> int:
        node = self._next_node[group_id]
        self._next_node[group_id] = node + 1
        return node

    def _new_traj_id(self, group_id: int) -> int:
        traj_id = self._next_traj[group_id]
        self._next_traj[group_id] = traj_id + 1
        return traj_id
