"""Trajectory-level advantages of the GRPO family.

- GRPO (Shao et al., DeepSeekMath, arXiv 2402.03300): A_i = (R_i - mean_g R) / (std_g R + eps).
- Dr. GRPO (Liu et al., arXiv 2503.20783): A_i = R_i - mean_g R (no std division, which
  removes the bias towards groups with small reward spread).
- RLOO (Ahmadian et al., arXiv 2402.14740): A_i = R_i - mean_{j != i} R_j (leave-one-out
  baseline, so a sample never serves as its own baseline).

Default: norm="std", the convention of the GRPO paper and of most reference code, so results
are comparable with published numbers. `std` is unbiased (ddof=1); eps is added to the std.

Groups of size 1: in every mode the group has mean 0 and std 1, so the reward passes through
unchanged. For "loo" there is no other sample to serve as the baseline; the reference code
then uses the reward itself, as for GRPO (docs/algorithms.md).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Literal

import numpy as np

from agentrl.algorithms.grouping import as_float_array, check_same_length, group_indices, normalize

GrpoNorm = Literal["std", "mean", "loo"]


def grpo_advantages(
    rewards: Sequence[float] | np.ndarray,
    group_ids: Sequence[Hashable],
    *,
    norm: GrpoNorm = "std",
    eps: float = 1e-6,
) -> np.ndarray:
    """One advantage per sample, normalized within the group of samples of the same task.

    Args:
        rewards: scalar reward R_i of each sample (trajectory).
        group_ids: the group (task) of each sample; any hashable.
        norm: "std" (GRPO), "mean" (Dr. GRPO) or "loo" (RLOO leave-one-out).
        eps: added to the std in "std" mode so a group with equal rewards gets 0, not NaN.

    Returns:
        float64 array with one advantage per sample, in input order.

    >>> grpo_advantages([1, 0, 0, 1, 1, 0], ["a", "a", "a", "b", "b", "b"]).round(6)
    array([ 1.154699, -0.577349, -0.577349,  0.577349,  0.577349, -1.154699])
    """
    check_same_length(rewards=rewards, group_ids=group_ids)
    if norm not in ("std", "mean", "loo"):
        raise ValueError(f"norm must be 'std', 'mean' or 'loo', got {norm!r}")
    values = as_float_array(rewards, "rewards")
    advantages = np.zeros_like(values)
    for idx in group_indices(group_ids).values():
        group = values[idx]
        n = len(idx)
        if n == 1:
            advantages[idx] = group  # mean 0, std 1 (RLOO: baseline 0): passes through unchanged
        elif norm == "loo":
            # Baseline of sample i is the mean of the n-1 others: (sum - R_i) / (n - 1).
            advantages[idx] = group - (group.sum() - group) / (n - 1)
        else:
            advantages[idx] = normalize(group, norm, eps)
    return advantages
