"""Grouping and normalization helpers shared by the advantage estimators.

Group ids, tree ids and anchors may be any hashable (int, str, tuple, ...), so grouping goes
through a Python dict rather than numpy (a numpy array of tuples would be split into columns).
Groups are returned in order of first appearance, which keeps every result deterministic.

The normalization statistics follow docs/algorithms.md: `std` is the unbiased sample standard
deviation (ddof=1) and `eps` is added to the std, not to the variance.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Literal

import numpy as np

Norm = Literal["std", "mean"]


def group_indices(keys: Sequence[Hashable]) -> dict[Hashable, np.ndarray]:
    """Map each distinct key to the positions where it occurs, in order of first appearance.

    >>> group_indices(["a", "b", "a"])
    {'a': array([0, 2]), 'b': array([1])}
    """
    positions: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        positions.setdefault(key, []).append(i)
    return {key: np.asarray(idx, dtype=np.int64) for key, idx in positions.items()}


def as_float_array(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    """A 1-D float64 copy of `values`; raises if it is not one-dimensional or not finite."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(
            f"{name} must be one-dimensional (one value per row), got shape {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values; check the reward function")
    return array.copy()


def check_same_length(**columns: Sequence[object]) -> int:
    """Return the common length of the given columns or raise naming the mismatching ones."""
    lengths = {name: len(column) for name, column in columns.items()}
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise ValueError(f"inputs must have one entry per row, got lengths {described}")
    return next(iter(lengths.values()), 0)


def normalize(values: np.ndarray, norm: Norm, eps: float) -> np.ndarray:
    """Centre `values` on their mean and, for norm="std", divide by (unbiased std + eps).

    The caller decides what a group of size 1 means; this function expects at least 2 values.
    """
    centred = values - values.mean()
    if norm == "mean":
        return centred
    if norm == "std":
        return centred / (values.std(ddof=1) + eps)
    raise ValueError(f"norm must be 'std' or 'mean', got {norm!r}")
