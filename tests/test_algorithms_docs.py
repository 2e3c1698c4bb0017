"""Every worked vector of docs/algorithms.md, computed by the code the page describes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from agentrl.algorithms import (
    aggregate,
    arpo_branch_probability,
    arpo_hard_advantages,
    arpo_step_entropy,
    cluster_anchors,
    dynamic_sampling_filter,
    gigpo_advantages,
    grpo_advantages,
    kl_penalty,
    policy_loss,
    top_std_filter,
    tree_grpo_advantages,
    ufo_return,
)

PAGE = Path(__file__).resolve().parents[1] / "docs" / "algorithms.md"


def test_the_page_exists() -> None:
    # That nothing points to design notes outside the repository instead: tests/test_docs.py.
    assert PAGE.is_file() and PAGE.read_text().startswith("#")


@pytest.mark.parametrize(
    ("norm", "expected"),
    [
        ("std", [1.154699, -0.577349, -0.577349, 0.577349, 0.577349, -1.154699]),
        ("mean", [0.666667, -0.333333, -0.333333, 0.333333, 0.333333, -0.666667]),
        ("loo", [1, -0.5, -0.5, 0.5, 0.5, -1]),
    ],
)
def test_grpo_family(norm: str, expected: list[float]) -> None:
    got = grpo_advantages([1, 0, 0, 1, 1, 0], list("aaabbb"), norm=norm)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert grpo_advantages([0.7, 1, 0], list("xyy"), norm=norm)[0] == pytest.approx(0.7)


GIGPO = {
    "step_rewards": [0.0, 10.0, 0.0, 0.0, 0.0],
    "traj_ids": list("AABBB"),
    "group_ids": [0] * 5,
    "anchors": ["s0", "s1", "s0", "s2", "s1"],
}


@pytest.mark.parametrize(
    ("norm", "stats", "expected"),
    [
        ("mean", "steps", [10.75, 11, -8.75, -4, -9]),
        ("std", "steps", [1.802552, 1.802552, -1.437403, -0.730297, -1.437403]),
        ("mean", "trajectories", [9.75, 10, -9.75, -5, -10]),
        ("std", "trajectories", [1.414214, 1.414214, -1.414214, -0.707107, -1.414214]),
    ],
)
def test_gigpo_table(norm: str, stats: str, expected: list[float]) -> None:
    got = gigpo_advantages(**GIGPO, norm=norm, episode_stats=stats)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_gigpo_invalid_penalty_and_similarity() -> None:
    got = gigpo_advantages([0, 1, 0, 1], [0, 0, 1, 1], [0] * 4, ["s0", "s1", "s0", "s1"],
                           gamma=0.5, invalid=[False, False, False, True], invalid_penalty=0.1)
    np.testing.assert_allclose(got, [0.025, 0.075, 0.025, -0.125], atol=1e-12)
    grid = "\n".join(["##########", "#___O____#", "#__X_____#", "#___P____#", "#________#"] * 4)
    moved = grid.replace("#___P____#", "#____P___#", 1)
    assert len(grid) == 219
    assert cluster_anchors([grid, moved], 0.95) == [0, 1]


def test_tree_grpo() -> None:
    got = tree_grpo_advantages([1, 0, 0, 1, 1, 0], ["q"] * 6, [1, 1, 1, 2, 2, 2])
    np.testing.assert_allclose(
        got, [2.067568, -1.490219, -1.490219, 1.490219, 1.490219, -2.067568], atol=1e-6
    )


def test_arpo_pieces() -> None:
    assert arpo_step_entropy([[math.log(0.5)] * 2] * 3, vocab_size=2) == pytest.approx(3.0)
    assert arpo_branch_probability(1.5, 1.0) == pytest.approx(0.6)
    assert arpo_branch_probability(4.0, 1.0) == 1.0
    got = arpo_hard_advantages([1.0, -1.0, 0.5], [["p", "a"], ["p", "b"], ["q"]],
                               {"p": 2, "a": 1, "b": 1, "q": 2})
    assert [x.tolist() for x in got] == [[0, 0, 1], [0, 0, -1], [0.5, 0.5]]


@pytest.mark.parametrize(
    ("answers", "solved", "malformed", "reference", "paper"),
    [
        (["4", " 4", "5"], 3, 0, 0.083333, 0.083333),
        (["7"], 2, 1, 0.9, 0.4),
        (["a", "A"], None, 1, -0.1, -0.35),
        (["a", "A", "b"], None, 0, -0.166667, -0.166667),
    ],
)
def test_ufo_table(answers, solved, malformed, reference, paper) -> None:
    assert ufo_return(answers, solved, malformed) == pytest.approx(reference, abs=1e-6)
    assert ufo_return(answers, solved, malformed, turn_counting="paper") == pytest.approx(paper, abs=1e-6)


@pytest.mark.parametrize(
    ("clip_high", "dual_clip", "per_token", "loss"),
    [
        (0.2, None, [-1.2, -0.5, 1.1, 5.0], 1.1),
        (0.28, None, [-1.28, -0.5, 1.1, 5.0], 1.08),
        (0.2, 3.0, [-1.2, -0.5, 1.1, 3.0], 0.6),
    ],
)
def test_clipped_loss_table(clip_high, dual_clip, per_token, loss) -> None:
    ratios = torch.tensor([[1.5, 0.5, 1.1, 5.0]])
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    got, _ = policy_loss(ratios.log(), torch.zeros(1, 4), advantages, torch.ones(1, 4),
                         clip_high=clip_high, dual_clip=dual_clip)
    assert float(got) == pytest.approx(loss, abs=1e-6)
    assert sum(per_token) / 4 == pytest.approx(loss)


def test_gspo_sequence_ratio() -> None:
    ratios = torch.tensor([[2.0, 0.5], [1.0, 1.3]])
    advantages = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    got, metrics = policy_loss(ratios.log(), torch.zeros(2, 2), advantages, torch.ones(2, 2),
                               level="sequence", agg="seq-mean-token-mean")
    assert float(got) == pytest.approx(0.070088, abs=1e-6)
    assert metrics["policy/ratio_max"] == pytest.approx(1.140175, abs=1e-6)


@pytest.mark.parametrize(
    ("agg", "expected"), [("token-mean", 2.5), ("seq-mean-token-mean", 3.0), ("seq-mean-token-sum", 5.0)]
)
def test_aggregation_table(agg: str, expected: float) -> None:
    values = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert float(aggregate(values, mask, agg)) == pytest.approx(expected)


def test_kl_estimators() -> None:
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert float(kl_penalty(logp, ref, "k1")) == pytest.approx(0.693147, abs=1e-6)
    assert float(kl_penalty(logp, ref, "k3")) == pytest.approx(0.193147, abs=1e-6)


def test_group_filters() -> None:
    keep = dynamic_sampling_filter([1, 1, 0, 1, 0.5], list("aabbc"))
    assert keep.tolist() == [False, False, True, True, False]
    rewards, groups = [1, 0, 0.5, 0.4, 1, 1, 0, 1], list("aabbccdd")
    assert top_std_filter(rewards, groups, 0.25).tolist() == [True, True] + [False] * 6
    assert top_std_filter(rewards, groups, 0.5).tolist() == [True, True] + [False] * 4 + [True, True]
