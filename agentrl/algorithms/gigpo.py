"""GiGPO: Group-in-Group Policy Optimization (Feng et al., arXiv 2505.10978).

GiGPO adds a step-level credit term to GRPO without a critic. Trajectories of one task form an
episode group; inside it, the step rows whose agents acted on the same environment state (the
same *anchor*) form a step group, whose members are compared by their discounted returns:

    A = A_E + omega * A_S
    A_E = normalize(R(tau)) within the episode group,   R(tau) = sum_t r_t
    A_S = normalize(R_t) within the step group,         R_t = sum_{k>=t} gamma^(k-t) r_k

Defaults follow the reference code (verl-agent) so that results match published numbers:
- norm="mean" (x - mean; the reference default for WebShop / Sokoban). norm="std" divides by
  (unbiased std + eps), as the reference does for ALFWorld and search.
- episode_stats="steps": the episode mean/std are taken over all step rows of the group, so a
  trajectory with T steps counts T times. episode_stats="trajectories" is paper Eq. 3 (one
  entry per trajectory).
- A step group of size 1 gets A_S = 0. The episode statistics of a group with a single entry
  (one step row with "steps", one trajectory with "trajectories") are mean 0 and std 1, so
  that value passes through, as in GRPO. With "steps", a group holding one trajectory of
  several steps has several entries and is normalised over its step rows like any other.

Similarity anchors: with `similarity=threshold`, string anchors are clustered greedily in row
order; a row joins the first cluster whose representative (its first member) has a
difflib.SequenceMatcher ratio >= threshold with it (the reference uses 0.95 by default for
text observations that differ in irrelevant details). Non-string anchors still need equality.
The matcher keeps difflib's default autojunk=True, as the reference does: from 200 characters
on, characters that make up more than 1% of a text count as junk, which lowers the ratio of
long texts over a small alphabet (a grid of '#' and '_') a lot.

Invalid actions: with `invalid` flags and `invalid_penalty` c > 0 (reference 0.1), c is
subtracted *after* discounting from the value of each invalid row, so it never propagates to
earlier steps. It lowers that row's entry in both terms: its episode return R(tau) - c (the
group statistics of episode_stats="trajectories" still use the unpenalized returns) and its
step return R_t - c.
"""

from __future__ import annotations

import difflib
from collections.abc import Hashable, Sequence
from typing import Literal

import numpy as np

from agentrl.algorithms.grouping import (
    Norm,
    as_float_array,
    check_same_length,
    group_indices,
    normalize,
)

EpisodeStats = Literal["steps", "trajectories"]


def discounted_returns(rewards: Sequence[float] | np.ndarray, gamma: float) -> np.ndarray:
    """R_t = sum_{k>=t} gamma^(k-t) r_k for one trajectory's rewards in time order."""
    values = np.asarray(rewards, dtype=np.float64)
    returns = np.zeros_like(values)
    running = 0.0
    for t in range(len(values) - 1, -1, -1):
        running = values[t] + gamma * running
        returns[t] = running
    return returns


def cluster_anchors(anchors: Sequence[Hashable], similarity: float | None) -> list[int]:
    """Assign a cluster number to each anchor (rows of one episode group).

    similarity=None: exact equality of the hashable keys. Otherwise greedy first-fit in row
    order on difflib ratio against each cluster's first member (string anchors only; other
    anchors join a cluster only when equal to its representative).
    """
    if similarity is None:
        numbering: dict[Hashable, int] = {}
        return [numbering.setdefault(anchor, len(numbering)) for anchor in anchors]
    if not 0.0 <= similarity <= 1.0:
        raise ValueError(
            f"similarity must be a difflib ratio threshold in [0, 1], got {similarity}"
        )
    representatives: list[Hashable] = []
    labels: list[int] = []
    for anchor in anchors:
        for cluster, representative in enumerate(representatives):
            if _similar(anchor, representative, similarity):
                labels.append(cluster)
                break
        else:
            labels.append(len(representatives))
            representatives.append(anchor)
    return labels


def _similar(a: Hashable, b: Hashable, threshold: float) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        if a == b:
            return True
        return difflib.SequenceMatcher(None, a, b).ratio() >= threshold  # autojunk as the reference
    return a == b


def gigpo_advantages(
    step_rewards: Sequence[float] | np.ndarray,
    traj_ids: Sequence[Hashable],
    group_ids: Sequence[Hashable],
    anchors: Sequence[Hashable],
    *,
    gamma: float = 0.95,
    omega: float = 1.0,
    norm: Norm = "mean",
    episode_stats: EpisodeStats = "steps",
    similarity: float | None = None,
    eps: float = 1e-6,
    invalid: Sequence[bool] | None = None,
    invalid_penalty: float = 0.0,
) -> np.ndarray:
    """GiGPO advantage A = A_E + omega * A_S, one value per step row.

    Args:
        step_rewards: env reward r_t of each step row. Rows of one trajectory must appear in
            time order (they need not be contiguous).
        traj_ids: trajectory of each row. A trajectory is identified by (group id, traj id),
            so traj ids may restart at 0 in every group.
        group_ids: episode group (task) of each row.
        anchors: hashable key of the env state the agent acted on (the raw observation before
            the action, without history or prompt).
        gamma: discount of the step return R_t.
        omega: weight of the step term.
        norm: "mean" (reference default) or "std", used for both terms.
        episode_stats: "steps" (reference: stats over step rows) or "trajectories" (paper Eq. 3).
        similarity: None for exact anchor equality, or a difflib ratio threshold (e.g. 0.95).
        eps: added to the std when norm="std".
        invalid: optional per-row flags, True where the action was invalid.
        invalid_penalty: c subtracted after discounting from invalid rows (reference 0.1).

    Returns:
        float64 array with one advantage per step row, in input order.
    """
    n_rows = check_same_length(
        step_rewards=step_rewards, traj_ids=traj_ids, group_ids=group_ids, anchors=anchors
    )
    if norm not in ("mean", "std"):
        raise ValueError(f"norm must be 'mean' or 'std', got {norm!r}")
    if episode_stats not in ("steps", "trajectories"):
        raise ValueError(f"episode_stats must be 'steps' or 'trajectories', got {episode_stats!r}")
    rewards = as_float_array(step_rewards, "step_rewards")
    penalty = np.zeros(n_rows)
    if invalid is not None:
        check_same_length(step_rewards=step_rewards, invalid=invalid)
        penalty = invalid_penalty * np.asarray(invalid, dtype=np.float64)

    # Per-row episode return and discounted step return, computed per trajectory. A trajectory
    # is keyed by (group, traj) so traj ids may restart in every group.
    episode_return = np.zeros(n_rows)
    step_return = np.zeros(n_rows)
    first_rows_by_group: dict[Hashable, list[int]] = {}
    for (group_id, _), rows in group_indices(list(zip(group_ids, traj_ids, strict=True))).items():
        episode_return[rows] = rewards[rows].sum()
        step_return[rows] = discounted_returns(rewards[rows], gamma)
        first_rows_by_group.setdefault(group_id, []).append(int(rows[0]))
    episode_value = episode_return - penalty
    step_value = step_return - penalty

    advantages = np.zeros(n_rows)
    for group_id, rows in group_indices(group_ids).items():
        # A_E. Statistics over step rows (a trajectory weighs its length) or over trajectories.
        values = episode_value[rows]
        first_rows = first_rows_by_group[group_id]
        stats = values if episode_stats == "steps" else episode_return[first_rows]
        if len(stats) == 1:
            episode_term = values  # a single entry: mean 0, std 1, its value passes through
        else:
            episode_term = values - stats.mean()
            if norm == "std":
                episode_term = episode_term / (stats.std(ddof=1) + eps)
        # A_S over the step groups (equal or similar anchors) inside this episode group.
        step_term = np.zeros(len(rows))
        labels = cluster_anchors([anchors[i] for i in rows], similarity)
        for members in group_indices(labels).values():
            if len(members) > 1:  # a step group of size 1 has no peer to compare with: A_S = 0
                step_term[members] = normalize(step_value[rows[members]], norm, eps)
        advantages[rows] = episode_term + omega * step_term
    return advantages
