"""ARPO: Agentic Reinforced Policy Optimization (Dong et al., arXiv 2507.19849).

ARPO branches a rollout where the model becomes uncertain right after a tool result. This
module holds the math; the round-based sampler that uses it lives in the rollout code.

- Step entropy: over the first k generated tokens of a segment (k = 20), take the top-k'
  log-probs (k' = 10) at each position and sum H = -sum p log p over all of them (summed over
  positions, not averaged), then divide by log |V| (docs/algorithms.md, ARPO).
- Branch probability: P = clip(p0 + beta * (H_t - H0), 0, 1) with p0 = 0.5 and beta = 0.2,
  where H0 is the first entropy measured on the trajectory slot.
- Advantage attribution. `soft` (reference default) is plain GRPO over the n rollouts of the
  task, i.e. `grpo_advantages`. `hard` (paper only) is `arpo_hard_advantages`: tokens after a
  branch point get their own trajectory's advantage; tokens of a segment shared by several
  trajectories (the common prefix before the branch) get the mean advantage of the
  trajectories sharing it. A shared segment is a copy in each sharing sequence; with equal
  ratios the copies' summed loss with the mean advantage equals the summed loss with their own
  advantages, so hard attribution differs from soft only where the segment is trained once:
  `once=True` (what the `arpo` estimator uses) gives each of its m copies mean / m.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np


def arpo_step_entropy(
    top_logprobs: Sequence[Sequence[float]],
    vocab_size: int,
    k: int = 20,
    *,
    top_k: int | None = 10,
) -> float:
    """Normalized step entropy of one generated segment.

    Args:
        top_logprobs: per generated position, the largest log-probs returned by the generator
            (`Completion.top_logprobs`).
        vocab_size: |V|, the normalizer is log |V|.
        k: only the first k positions of the segment count.
        top_k: k', the number of largest log-probs used per position (None: all given).

    Returns:
        sum over the first k positions and their top-k' entries of -p log p, divided by
        log |V|; 0.0 for an empty segment.

    >>> round(arpo_step_entropy([[math.log(0.5)] * 2] * 3, vocab_size=2), 6)  # 3 positions
    3.0
    """
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2 so that log |V| > 0, got {vocab_size}")
    total = 0.0
    for position in top_logprobs[:k]:
        logps = np.sort(np.asarray(position, dtype=np.float64))[::-1]
        if top_k is not None:
            logps = logps[:top_k]
        logps = logps[np.isfinite(logps)]  # p = 0 contributes 0 (limit of -p log p)
        total += float(-(np.exp(logps) * logps).sum())
    return total / math.log(vocab_size)


def arpo_branch_probability(h: float, h0: float, p0: float = 0.5, beta: float = 0.2) -> float:
    """P(branch) = clip(p0 + beta * (h - h0), 0, 1): more likely when entropy rose after a tool.

    >>> arpo_branch_probability(1.5, 1.0)
    0.6
    """
    return float(min(1.0, max(0.0, p0 + beta * (h - h0))))


def arpo_hard_advantages(
    traj_advantages: Sequence[float] | np.ndarray,
    traj_segments: Sequence[Sequence[Hashable]],
    segment_lengths: Mapping[Hashable, int],
    *,
    once: bool = False,
) -> list[np.ndarray]:
    """Hard advantage attribution: per-token advantages, shared segments get the mean.

    Input format: a trajectory is the concatenation of segments. A branch copies its source's
    segments so far and continues with new ones, so two trajectories share exactly the segments
    they both list. Segment ids must be unique within the batch (e.g. (task, node) tuples).

    Args:
        traj_advantages: one advantage per trajectory (e.g. GRPO over the task's n rollouts).
        traj_segments: for each trajectory, its segment ids in token order.
        segment_lengths: number of tokens each segment occupies in the trajectory's sequence.

    Returns:
        one float64 array per trajectory, of length sum of its segments' lengths. Each token of
        segment s holds the mean of traj_advantages over the trajectories that list s; a
        segment listed by one trajectory only therefore holds that trajectory's own advantage.
        Multiply by the loss mask to keep only action tokens.
        With `once=True`, each of the m copies of a shared segment holds that mean divided by
        m: the copies sit in m sequences of the batch, and summed over them the segment
        carries its mean advantage once, as if it were trained as one sequence (with the
        copies' equal ratios, the clipped loss is linear in the advantage, so this is exact).

    >>> out = arpo_hard_advantages([1.0, -1.0], [["p", "a"], ["p", "b"]], {"p": 2, "a": 1, "b": 1})
    >>> [x.tolist() for x in out]
    [[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]
    """
    advantages = np.asarray(traj_advantages, dtype=np.float64)
    if advantages.shape != (len(traj_segments),):
        raise ValueError(
            f"got {advantages.size} advantages for {len(traj_segments)} trajectories; "
            "pass one advantage per trajectory"
        )
    members: dict[Hashable, set[int]] = {}
    for traj, segments in enumerate(traj_segments):
        for segment in segments:
            if segment not in segment_lengths:
                raise KeyError(
                    f"segment {segment!r} of trajectory {traj} has no entry in segment_lengths"
                )
            members.setdefault(segment, set()).add(traj)
    segment_value = {s: float(advantages[sorted(t)].mean()) / (len(t) if once else 1)
                     for s, t in members.items()}
    return [
        np.concatenate(
            [np.full(segment_lengths[s], segment_value[s]) for s in segments] or [np.zeros(0)]
        )
        for segments in traj_segments
    ]
