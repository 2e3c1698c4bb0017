"""The advantage estimators the trainer chooses from by `algorithm.advantage`.

An estimator maps an iteration's groups (each holding the trajectories to train on: the
filter's kept groups, without the ones the infrastructure ended) to per-token advantages, one
float array per trajectory, aligned with its `token_ids` (0 off the action tokens). Trajectory
level estimators (GRPO, Tree-GRPO) put one value on every action token, step-level ones (GiGPO)
one value per turn, and per-segment ones (ARPO's hard attribution) may give each token its own.
So a new estimator needs no trainer change: write the function and register it.

    @register_advantage("my_estimator")
    def my_estimator(groups, settings):   # settings: the recipe's `algorithm` section
        return [np.zeros(len(t.token_ids)) for g in groups for t in g.trajectories]
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from agentrl.algorithms.advantages import grpo_advantages
from agentrl.algorithms.arpo import arpo_hard_advantages
from agentrl.algorithms.broadcast import broadcast_to_tokens
from agentrl.algorithms.gigpo import gigpo_advantages
from agentrl.algorithms.tree_grpo import tree_grpo_advantages
from agentrl.types import Group, Trajectory

Estimator = Callable[[Sequence[Group], Any], list[np.ndarray]]

ADVANTAGE_ESTIMATORS: dict[str, Estimator] = {}


def register_advantage(name: str) -> Callable[[Estimator], Estimator]:
    """Register an estimator under `name` (the value of `algorithm.advantage`)."""

    def add(estimator: Estimator) -> Estimator:
        if name in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"an advantage estimator named {name!r} is already registered")
        ADVANTAGE_ESTIMATORS[name] = estimator
        return estimator

    return add


def token_advantages(name: str, groups: Sequence[Group], settings: Any) -> list[np.ndarray]:
    """Per-token advantages of every trajectory of `groups`, in order, by estimator `name`."""
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; registered: "
                         f"{', '.join(sorted(ADVANTAGE_ESTIMATORS))}")
    if not any(g.trajectories for g in groups):
        return []
    return ADVANTAGE_ESTIMATORS[name](groups, settings)


def _per_trajectory(values: np.ndarray, trajs: Sequence[Trajectory]) -> list[np.ndarray]:
    """One value per trajectory, on each of its action spans."""
    return [broadcast_to_tokens(float(a), [s.action_span for s in t.steps], len(t.token_ids))
            for a, t in zip(values, trajs)]


@register_advantage("grpo")
def grpo(groups: Sequence[Group], settings: Any) -> list[np.ndarray]:
    """GRPO / Dr. GRPO / RLOO by `settings.norm`: the trajectory's reward against its group's."""
    trajs = [t for g in groups for t in g.trajectories]
    values = grpo_advantages([t.reward for t in trajs], [t.group_id for t in trajs], norm=settings.norm)
    return _per_trajectory(values, trajs)


@register_advantage("arpo")
def arpo(groups: Sequence[Group], settings: Any) -> list[np.ndarray]:
    """ARPO: GRPO over the task's rollouts (`settings.attribution` soft, the reference code), or
    with hard attribution (the paper): a turn several rollouts share (a branch copies its
    source's turns, node ids included) gets the mean advantage of those rollouts, spread over
    its copies so that the batch trains it once (`arpo_hard_advantages(once=True)`)."""
    trajs = [t for g in groups for t in g.trajectories]
    values = grpo_advantages([t.reward for t in trajs], [t.group_id for t in trajs], norm=settings.norm)
    if getattr(settings, "attribution", "soft") == "soft":
        return _per_trajectory(values, trajs)
    # A turn's key: its node in the group's tree (node 0, the root, marks a turn the engine
    # did not number, e.g. a hand-built trajectory: that turn is its own).
    turns = [[(t.group_id, s.node_id) if s.node_id else ("own", i, k)
              for k, s in enumerate(t.steps)] for i, t in enumerate(trajs)]
    per_turn = arpo_hard_advantages(values, turns, {key: 1 for keys in turns for key in keys}, once=True)
    return [broadcast_to_tokens(v, [s.action_span for s in t.steps], len(t.token_ids))
            for v, t in zip(per_turn, trajs)]


@register_advantage("tree_grpo")
def tree_grpo(groups: Sequence[Group], settings: Any) -> list[np.ndarray]:
    """Tree-GRPO: GRPO over the task's leaves plus GRPO over the leaves of the same tree."""
    trajs = [t for g in groups for t in g.trajectories]
    values = tree_grpo_advantages([t.reward for t in trajs], [t.group_id for t in trajs],
                                  [t.tree_id for t in trajs])
    return _per_trajectory(values, trajs)


@register_advantage("gigpo")
def gigpo(groups: Sequence[Group], settings: Any) -> list[np.ndarray]:
    """GiGPO: episode-level plus step-level (same anchor state) advantages, one per turn."""
    trajs = [t for g in groups for t in g.trajectories]
    rows = [(i, s) for i, t in enumerate(trajs) for s in t.steps]  # time order per trajectory
    per_step = gigpo_advantages(
        [s.reward for _, s in rows],
        [(trajs[i].group_id, trajs[i].traj_id) for i, _ in rows],
        [trajs[i].group_id for i, _ in rows],
        [s.anchor for _, s in rows],
        gamma=settings.gamma, omega=settings.omega, norm=settings.norm,  # the config refuses "loo"
        episode_stats=settings.episode_stats, similarity=settings.similarity,
        invalid=[not s.action_valid for _, s in rows], invalid_penalty=settings.invalid_penalty,
    )
    out, k = [], 0
    for t in trajs:
        n = len(t.steps)
        out.append(broadcast_to_tokens(per_step[k:k + n], [s.action_span for s in t.steps],
                                       len(t.token_ids)))
        k += n
    return out
