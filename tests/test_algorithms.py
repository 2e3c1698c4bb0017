"""Advantage estimators: the worked vectors of docs/algorithms.md plus hand-computed properties."""

from __future__ import annotations

import difflib
import doctest
import importlib

import numpy as np
import pytest

from agentrl.algorithms import (
    broadcast_to_tokens,
    cluster_anchors,
    discounted_returns,
    gigpo_advantages,
    grpo_advantages,
    normalize_answer,
    tree_grpo_advantages,
    ufo_return,
)

# ---------------------------------------------------------------- GRPO family


def test_grpo_std_worked_vector() -> None:
    got = grpo_advantages([1, 0, 0, 1, 1, 0], ["a", "a", "a", "b", "b", "b"], norm="std")
    expected = [1.154699, -0.577349, -0.577349, 0.577349, 0.577349, -1.154699]
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("norm", ["std", "mean"])
def test_grpo_advantages_sum_to_zero_per_group(norm: str) -> None:
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=40)
    groups = [i % 5 for i in range(40)]  # interleaved groups of 8
    advantages = grpo_advantages(rewards, groups, norm=norm)
    for g in range(5):
        assert abs(advantages[[i for i in range(40) if groups[i] == g]].sum()) < 1e-9


def test_grpo_std_mode_has_unit_unbiased_std() -> None:
    rewards = np.array([3.0, 1.0, 4.0, 1.0, 5.0])
    advantages = grpo_advantages(rewards, [0] * 5, norm="std", eps=0.0)
    assert advantages.std(ddof=1) == pytest.approx(1.0)


def test_grpo_loo_by_hand() -> None:
    # Baselines are the means of the two others: 4, 3.5, 1.5.
    got = grpo_advantages([1.0, 2.0, 6.0], ["t"] * 3, norm="loo")
    np.testing.assert_allclose(got, [-3.0, -1.5, 4.5])


@pytest.mark.parametrize("norm", ["std", "mean", "loo"])
def test_grpo_singleton_group_passes_its_reward_through(norm: str) -> None:
    # Every mode, RLOO included: a group of one has mean 0 and std 1 (the reference code's
    # convention), so its reward is its advantage.
    got = grpo_advantages([0.7, 1.0, 0.0], [("task", 1), ("task", 2), ("task", 2)], norm=norm)
    assert got[0] == pytest.approx(0.7)
    assert got[1] == -got[2] != 0.0


def test_grpo_equal_rewards_give_zero_not_nan() -> None:
    got = grpo_advantages([1.0, 1.0, 1.0], [0, 0, 0], norm="std")
    np.testing.assert_array_equal(got, [0.0, 0.0, 0.0])


def test_grpo_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="one entry per row"):
        grpo_advantages([1.0, 0.0], [0])
    with pytest.raises(ValueError, match="norm must be"):
        grpo_advantages([1.0, 0.0], [0, 0], norm="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        grpo_advantages([float("nan"), 0.0], [0, 0])


# ---------------------------------------------------------------- GiGPO

# docs/algorithms.md, GiGPO: trajectory A anchors [s0, s1] rewards [0, 10];
# trajectory B anchors [s0, s2, s1] rewards [0, 0, 0]. Rows A0 A1 B0 B1 B2.
WORKED = {
    "step_rewards": [0.0, 10.0, 0.0, 0.0, 0.0],
    "traj_ids": ["A", "A", "B", "B", "B"],
    "group_ids": [0, 0, 0, 0, 0],
    "anchors": ["s0", "s1", "s0", "s2", "s1"],
}
MEAN_A_S = np.array([4.75, 5.0, -4.75, 0.0, -5.0])
STD_A_S = np.array([0.707107, 0.707107, -0.707107, 0.0, -0.707107])


def test_discounted_returns_of_worked_example() -> None:
    np.testing.assert_allclose(discounted_returns([0.0, 10.0], 0.95), [9.5, 10.0])
    np.testing.assert_allclose(discounted_returns([1.0, 1.0, 1.0], 0.5), [1.75, 1.5, 1.0])


def test_gigpo_mean_steps_worked_vector() -> None:
    got = gigpo_advantages(**WORKED, norm="mean", episode_stats="steps")
    np.testing.assert_allclose(got, [10.75, 11.0, -8.75, -4.0, -9.0], atol=1e-6)


def test_gigpo_std_steps_worked_vector() -> None:
    got = gigpo_advantages(**WORKED, norm="std", episode_stats="steps")
    np.testing.assert_allclose(
        got, [1.802552, 1.802552, -1.437403, -0.730297, -1.437403], atol=1e-6
    )


@pytest.mark.parametrize(
    ("norm", "episode_term", "step_term"), [("mean", 5.0, MEAN_A_S), ("std", 0.707107, STD_A_S)]
)
def test_gigpo_trajectory_stats_worked_vector(
    norm: str, episode_term: float, step_term: np.ndarray
) -> None:
    got = gigpo_advantages(**WORKED, norm=norm, episode_stats="trajectories")
    expected_episode = np.array([1, 1, -1, -1, -1]) * episode_term
    np.testing.assert_allclose(got, expected_episode + step_term, atol=1e-6)


def test_gigpo_omega_scales_only_the_step_term() -> None:
    base = gigpo_advantages(**WORKED, omega=0.0)
    np.testing.assert_allclose(base, [6.0, 6.0, -4.0, -4.0, -4.0])
    doubled = gigpo_advantages(**WORKED, omega=2.0)
    np.testing.assert_allclose(doubled - base, 2.0 * MEAN_A_S)


def test_gigpo_row_order_and_per_group_traj_ids() -> None:
    # The same group shuffled, plus a second group reusing traj ids "A"/"B" with other anchors:
    # trajectories are identified by (group, traj) and step groups never cross episode groups.
    order = [3, 0, 4, 1, 2]  # keeps time order within each trajectory (B1 before B2, A0 before A1)
    shuffled = {key: [values[i] for i in order] for key, values in WORKED.items()}
    second = {
        "step_rewards": [1.0, 0.0],
        "traj_ids": ["A", "B"],
        "group_ids": [1, 1],
        "anchors": ["s0", "s0"],
    }
    merged = {key: shuffled[key] + second[key] for key in WORKED}
    got = gigpo_advantages(**merged, norm="mean")
    expected_first = np.array([10.75, 11.0, -8.75, -4.0, -9.0])[order]
    np.testing.assert_allclose(got[:5], expected_first, atol=1e-9)
    # Second group: episode returns [1, 0] -> +-0.5; one step group s0 with R_t [1, 0] -> +-0.5.
    np.testing.assert_allclose(got[5:], [1.0, -1.0])


@pytest.mark.parametrize("norm", ["mean", "std"])
def test_gigpo_single_trajectory_group_is_normalised_over_its_step_rows(norm: str) -> None:
    # episode_stats="steps" (reference): the statistics are over the group's two step rows,
    # which hold the same return, so the episode term is 0; only a single row passes through.
    got = gigpo_advantages([1.0, 2.0], [0, 0], ["g", "g"], ["x", "y"], norm=norm)
    np.testing.assert_allclose(got, [0.0, 0.0])
    single_row = gigpo_advantages([3.0], [0], ["g"], ["x"], norm=norm)
    np.testing.assert_allclose(single_row, [3.0])


def test_gigpo_single_trajectory_steps_stats_see_the_invalid_penalty() -> None:
    # One trajectory; its second action was invalid: its rows hold 3 and 3 - 0.5, whose mean
    # (2.75) is the baseline, so the rows differ by the penalty.
    got = gigpo_advantages([1.0, 2.0], [0, 0], ["g", "g"], ["x", "y"], norm="mean",
                           invalid=[False, True], invalid_penalty=0.5)
    np.testing.assert_allclose(got, [0.25, -0.25])


@pytest.mark.parametrize("norm", ["mean", "std"])
def test_gigpo_single_trajectory_group_with_trajectory_stats_passes_return_through(
    norm: str,
) -> None:
    got = gigpo_advantages([1.0, 2.0], [0, 0], ["g", "g"], ["x", "y"], norm=norm,
                           episode_stats="trajectories")
    np.testing.assert_allclose(got, [3.0, 3.0])


def test_gigpo_invalid_penalty_after_discounting() -> None:
    # Two identical 2-step trajectories; B's second action was invalid.
    got = gigpo_advantages(
        [0.0, 1.0, 0.0, 1.0],
        [0, 0, 1, 1],
        [0, 0, 0, 0],
        ["s0", "s1", "s0", "s1"],
        gamma=0.5,
        invalid=[False, False, False, True],
        invalid_penalty=0.1,
    )
    # Episode values [1, 1, 1, 0.9] (mean 0.975); step returns s0: [0.5, 0.5] (the penalty does
    # not reach the earlier step), s1: [1.0, 0.9].
    np.testing.assert_allclose(got, [0.025, 0.075, 0.025, -0.125], atol=1e-12)
    without = gigpo_advantages(
        [0.0, 1.0, 0.0, 1.0], [0, 0, 1, 1], [0] * 4, ["s0", "s1", "s0", "s1"]
    )
    np.testing.assert_allclose(without, [0.0] * 4)


def test_similarity_clusters_first_fit_against_representative() -> None:
    x, y, z = "aaaaaaaaaa", "aaaaaaaabb", "aaaaaabbbb"
    ratio = lambda a, b: difflib.SequenceMatcher(None, a, b).ratio()  # noqa: E731
    assert ratio(x, y) >= 0.8 and ratio(y, z) >= 0.8 and ratio(x, z) < 0.8
    # z resembles y but y is not a representative (x is), so z opens a new cluster.
    assert cluster_anchors([x, y, z], 0.8) == [0, 0, 1]
    assert cluster_anchors([x, y, z], None) == [0, 1, 2]
    assert cluster_anchors([("pos", 1), ("pos", 1), 3], 0.9) == [0, 0, 1]


# A Sokoban-like grid of 219 characters; in the second the player (P) moved one cell right.
GRID = "\n".join(["##########", "#___O____#", "#__X_____#", "#___P____#", "#________#"] * 4)
GRID_MOVED = GRID.replace("#___P____#", "#____P___#", 1)


def test_similarity_uses_difflib_default_autojunk_as_the_reference() -> None:
    # From 200 characters on, difflib's default autojunk treats characters that make up more
    # than 1% of the text ('#', '_', newlines) as junk; the reference code keeps that default,
    # so these two grids are far apart (ratio 0.17), not near-duplicates (0.995 without it).
    assert len(GRID) >= 200
    assert difflib.SequenceMatcher(None, GRID, GRID_MOVED).ratio() < 0.5
    assert difflib.SequenceMatcher(None, GRID, GRID_MOVED, autojunk=False).ratio() > 0.95
    assert cluster_anchors([GRID, GRID_MOVED, GRID], 0.95) == [0, 1, 0]


def test_gigpo_similarity_anchors_reproduce_worked_vector() -> None:
    s0 = "You are in the kitchen. You see a fridge, a stove and a table."
    s1 = "You are in the hallway. You see a door to the north and a lamp."
    s2 = "You are in the garden. There is a shed and a watering can here."
    s0_b, s1_b = s0.replace("table", "tables"), s1 + " "  # near-duplicates of the same state
    assert 0.95 <= difflib.SequenceMatcher(None, s0, s0_b).ratio() < 1.0
    inputs = dict(WORKED, anchors=[s0, s1, s0_b, s2, s1_b])
    similar = gigpo_advantages(**inputs, similarity=0.95)
    np.testing.assert_allclose(similar, [10.75, 11.0, -8.75, -4.0, -9.0], atol=1e-6)
    exact = gigpo_advantages(**inputs)  # every step group is a singleton: only A_E remains
    np.testing.assert_allclose(exact, [6.0, 6.0, -4.0, -4.0, -4.0])


# ---------------------------------------------------------------- Tree-GRPO


def test_tree_grpo_worked_vector() -> None:
    got = tree_grpo_advantages([1, 0, 0, 1, 1, 0], ["q"] * 6, [1, 1, 1, 2, 2, 2])
    expected = [2.067568, -1.490219, -1.490219, 1.490219, 1.490219, -2.067568]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_tree_ids_are_scoped_to_their_group() -> None:
    # Tree 0 exists in both tasks; the two trees must not be normalized together.
    got = tree_grpo_advantages([1, 0, 5, 5], ["a", "a", "b", "b"], [0, 0, 0, 0])
    np.testing.assert_allclose(got, [2 * 0.707106, -2 * 0.707106, 0.0, 0.0], atol=1e-5)


# ---------------------------------------------------------------- UFO


def test_ufo_worked_vector() -> None:
    assert ufo_return(["4", " 4", "5"], solved_turn=3) == pytest.approx(0.083333, abs=1e-6)


@pytest.mark.parametrize("turn_counting", ["reference", "paper"])
def test_ufo_return_cases_without_malformed_turns(turn_counting: str) -> None:
    # With every turn valid, both countings agree.
    count = {"turn_counting": turn_counting}
    assert ufo_return(["42"], solved_turn=1, **count) == 1.0
    assert ufo_return(["a", "b"], solved_turn=2, **count) == 0.5
    assert ufo_return(["4", " 4", "5"], solved_turn=3, **count) == pytest.approx(0.083333, abs=1e-6)
    # Unsolved after two valid answers, the same one twice ("A" == "a").
    assert ufo_return(["a", "A"], solved_turn=None, **count) == pytest.approx(-0.25)
    assert ufo_return(["x", "x"], None, lam=0.0, format_penalty=0.0, **count) == 0.0


def test_ufo_reference_counting_malformed_turns_do_not_advance_the_decay() -> None:
    # Malformed, then correct: the correct answer is the first valid one, 1.0 - 0.1.
    assert ufo_return(["7"], solved_turn=2, malformed_turns=1) == pytest.approx(0.9)
    # Wrong, malformed, correct: the second valid answer, 0.5 - 0.1.
    assert ufo_return(["6", "7"], solved_turn=3, malformed_turns=1) == pytest.approx(0.4)


def test_ufo_reference_counting_unsolved_with_malformed_turns_has_no_repetition_penalty() -> None:
    # The reference env charges the repetition penalty when it ends itself: a correct answer,
    # or max_turns valid answers. Malformed turns leave it short of that when the turn limit
    # stops the episode, so only the format penalty remains.
    assert ufo_return(["a", "A"], solved_turn=None, malformed_turns=1) == pytest.approx(-0.1)
    assert ufo_return([], solved_turn=None, malformed_turns=2) == pytest.approx(-0.2)
    # Solved episodes always carry it: wrong "a" twice, malformed, correct "b".
    assert ufo_return(["a", "a", "b"], solved_turn=4, malformed_turns=1) == pytest.approx(
        0.25 - 0.5 * (1 - 2 / 3) - 0.1
    )


def test_ufo_paper_counting_keeps_every_turn() -> None:
    paper = {"turn_counting": "paper"}
    assert ufo_return(["7"], solved_turn=2, malformed_turns=1, **paper) == pytest.approx(0.4)
    assert ufo_return(["a", "A"], solved_turn=None, malformed_turns=1, **paper) == pytest.approx(-0.35)
    assert ufo_return([], solved_turn=None, malformed_turns=2, **paper) == pytest.approx(-0.2)


def test_ufo_return_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="malformed_turns"):
        ufo_return(["1", None], None)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="1-based"):
        ufo_return(["1"], solved_turn=0)
    with pytest.raises(ValueError, match="solved_turn"):
        ufo_return(["1", "2"], solved_turn=1)  # the correct answer ends the episode
    with pytest.raises(ValueError, match="turn_counting"):
        ufo_return(["1"], solved_turn=1, turn_counting="turns")  # type: ignore[arg-type]


def test_normalize_answer() -> None:
    assert normalize_answer(" New\tYork \n") == "newyork"
    assert normalize_answer("3 . 1 4") == "3.14"


# ---------------------------------------------------------------- broadcast


def test_broadcast_to_tokens() -> None:
    np.testing.assert_array_equal(
        broadcast_to_tokens([1.0, -2.0], [(1, 3), (4, 5)], 6), [0, 1, 1, 0, -2, 0]
    )
    np.testing.assert_array_equal(broadcast_to_tokens(0.5, [(0, 1), (2, 4)], 4), [0.5, 0, 0.5, 0.5])
    with pytest.raises(ValueError, match="one value per span"):
        broadcast_to_tokens([1.0], [(0, 1), (1, 2)], 3)
    with pytest.raises(ValueError, match="outside"):
        broadcast_to_tokens([1.0], [(2, 9)], 5)
    with pytest.raises(ValueError, match="overlaps"):
        broadcast_to_tokens([1.0, 2.0], [(0, 3), (2, 4)], 5)


# ---------------------------------------------------------------- docstring examples


@pytest.mark.parametrize(
    "module",
    ["advantages", "gigpo", "tree_grpo", "ufo", "filters", "arpo", "broadcast", "grouping"],
)
def test_docstring_examples(module: str) -> None:
    result = doctest.testmod(importlib.import_module(f"agentrl.algorithms.{module}"))
    assert result.failed == 0
