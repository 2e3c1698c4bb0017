"""Tree-GRPO's sampling (Ji et al., "Tree Search for LLM Agent Reinforcement Learning",
arXiv 2509.21240): M trees per task, grown by branching whole agent turns.

Per task, each of the M trees starts as one full chain (a rollout from the prompt). Then L
expansion rounds follow, per tree: when every episode of the tree has finished, pick N nodes
uniformly *with replacement* from {root} + the tree's non-leaf nodes, and continue one new
branch from each picked node's full context (the root: a new chain from the prompt). A node is
one whole agent turn (action + observation); a non-leaf node is a turn that some episode of the
tree continued. Every branch runs to the end and is one leaf, so a tree has 1 + L*N leaves;
with `k` below that, K of them are kept at random (the rest were sampled, counted in the
budgets, and are not trained on). Branches start from the env state at their node (a fork the
engine keeps after every turn, `keep_node_forks`), so their shared turns, tool results included,
are inherited and never run again.

The random choices come from the rollout's seed, so a seed fixes the trees.
"""

from __future__ import annotations

from typing import Sequence

from agentrl.rollout.context import EpisodeRequest, RolloutContext
from agentrl.rollout.episode import Episode
from agentrl.types import Completion, SamplingParams


class TreeStrategy:
    """M trees per task, L expansion rounds of N branches each, K leaves kept per tree."""

    keep_node_forks = True

    def __init__(self, m: int = 2, n: int = 2, l: int = 1, k: int | None = None,  # noqa: E741
                 max_refills: int | None = None) -> None:
        for name, value, low in (("m", m, 1), ("n", n, 1), ("l", l, 0)):
            if value < low:
                raise ValueError(f"tree strategy: {name} must be at least {low}, got {value}")
        leaves = 1 + l * n
        k = leaves if k is None else k
        if not 1 <= k <= leaves:
            raise ValueError(f"tree strategy: k={k} leaves cannot be kept from 1 + l*n = {leaves} "
                             f"leaves per tree; set k between 1 and {leaves} (or raise l or n)")
        self.m, self.n, self.l, self.k = m, n, l, k
        #: replacements per group for branches or chains the infrastructure ended
        self.max_refills = m * leaves if max_refills is None else max_refills
        self._rounds: dict[tuple[int, int], int] = {}
        self._refills: dict[int, int] = {}
        self._rollout: RolloutContext | None = None

    @property
    def group_size(self) -> int:
        """Trajectories per task: M trees of K leaves."""
        return self.m * self.k

    def sampling_params(self, base: SamplingParams) -> SamplingParams:
        return base

    def start(self, num_tasks: int, rollout: RolloutContext) -> list[EpisodeRequest]:
        self._rounds, self._refills, self._rollout = {}, {}, rollout
        return [rollout.spawn(task) for task in range(num_tasks) for _ in range(self.m)]

    def refill(self, failed: Sequence[Episode], rollout: RolloutContext) -> list[EpisodeRequest]:
        """A failed chain is started again in its tree; a failed branch is made again from the
        same node (a new draw of the same expansion)."""
        again = []
        for episode in failed:
            used = self._refills.get(episode.group_id, 0)
            if used >= self.max_refills:
                continue
            self._refills[episode.group_id] = used + 1
            if episode.branched_from is None or episode.branched_from[1] == 0:
                again.append(rollout.spawn(episode.group_id, tree_id=episode.tree_id))
            else:
                source_id, turn = episode.branched_from
                source = next(e for e in rollout.episodes(episode.group_id) if e.traj_id == source_id)
                again.append(rollout.branch(source, at_turn=turn))
        return again

    def keep_fork(self, episode: Episode) -> bool:
        """Whether a later expansion round may branch from this episode's turns: only while its
        tree has rounds left after the one it belongs to (the last round's forks would go
        unused, and a fork of a sandboxed env costs a sandbox)."""
        return self._rounds.get((episode.group_id, episode.tree_id), 0) < self.l

    def after_round(self, taken: Sequence[tuple[Episode, Completion]],
                    rollout: RolloutContext) -> list[EpisodeRequest]:
        """Expand every tree whose episodes have all finished and that has rounds left."""
        requests = []
        for group_id in sorted({episode.group_id for episode, _ in taken}):
            members = rollout.episodes(group_id)
            for tree_id in sorted({e.tree_id for e in members}):
                tree = [e for e in members if e.tree_id == tree_id]
                done = self._rounds.get((group_id, tree_id), 0)
                if done >= self.l or not all(e.done for e in tree):
                    continue
                self._rounds[(group_id, tree_id)] = done + 1
                requests += self._expand(tree, rollout.rng(group_id, tree_id, done), rollout)
        return requests

    def _expand(self, tree: list[Episode], rng, rollout: RolloutContext) -> list[EpisodeRequest]:
        """N branches from nodes drawn uniformly with replacement from {root} + non-leaf nodes."""
        healthy = [e for e in tree if not e.infra_error] or tree
        # A non-leaf node: a turn some episode continued (its position is not the last).
        # Each distinct node once, with an episode that holds it and its depth.
        candidates: dict[int, tuple[Episode, int]] = {0: (healthy[0], 0)}  # 0 = the root
        for episode in healthy:
            for depth, node in enumerate(episode.node_path[:-1], start=1):
                candidates.setdefault(node, (episode, depth))
        nodes = sorted(candidates)
        picks = [nodes[rng.randrange(len(nodes))] for _ in range(self.n)]
        return [rollout.branch(*candidates[node]) for node in picks]

    def finish(self, episodes: Sequence[Episode]) -> list[Episode]:
        """K leaves per tree, chosen at random when a tree has more (failed ones stay, counted)."""
        if self._rollout is None:
            return list(episodes)
        kept = []
        for tree_id in sorted({e.tree_id for e in episodes}):
            tree = [e for e in episodes if e.tree_id == tree_id]
            leaves = [e for e in tree if not e.infra_error]
            if len(leaves) > self.k:
                rng = self._rollout.rng(tree[0].group_id, tree_id, -1)
                chosen = set(id(e) for e in rng.sample(leaves, self.k))
                leaves = [e for e in leaves if id(e) in chosen]
            kept += [e for e in tree if e.infra_error] + leaves
        return sorted(kept, key=lambda e: e.traj_id)
