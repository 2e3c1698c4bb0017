"""pass@k: the chance that at least one of k sampled episodes of a task is correct.

With n episodes sampled for a task, c of them correct, the unbiased estimator (Chen et al.
2021, "Evaluating Large Language Models Trained on Code") is

    pass@k = 1 - C(n - c, k) / C(n, k)

i.e. one minus the chance that k episodes drawn without replacement from the n are all wrong.
The binomial coefficients overflow floats for large n, so the ratio is computed as the product

    C(n - c, k) / C(n, k) = prod_{i = n - c + 1}^{n} (1 - k / i)

which stays between 0 and 1 term by term. The benchmark's pass@k is the mean over tasks.

Special cases follow from the formula: pass@1 = c / n (the plain success rate), and with
k = n, pass@n = 1 if any episode is correct else 0 (the naive "any of n" estimate).
"""

from __future__ import annotations

import math
from typing import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one task with `n` samples of which `c` are correct.

    Raises ValueError when k is not in 1..n (pass@k is undefined with fewer than k samples)
    or c is not in 0..n.
    """
    if not 0 <= c <= n:
        raise ValueError(f"c={c} correct samples out of n={n}: c must be between 0 and n")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs at least k={k} samples per task, got n={n}; "
                         f"sample more episodes per task or choose k <= {n}")
    if n - c < k:
        return 1.0  # every draw of k samples holds a correct one
    all_wrong = math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
    return 1.0 - all_wrong


def mean_pass_at_k(outcomes: Sequence[Sequence[bool]], k: int) -> tuple[float, int]:
    """pass@k averaged over tasks, from each task's per-sample outcomes (True = correct).

    A task with fewer than k samples (its other episodes were lost to the infrastructure and
    could not be replaced) has no pass@k and is left out; returns (mean, tasks counted), the
    mean being NaN when no task has k samples.
    """
    values = [pass_at_k(len(task), sum(bool(s) for s in task), k) for task in outcomes if len(task) >= k]
    if not values:
        return float("nan"), 0
    return math.fsum(values) / len(values), len(values)
