"""Evaluation metrics: success (exact match for QA envs) versus Succ@k, mean tool calls, pass@k."""

from __future__ import annotations

import math

import pytest

from agentrl.config import ConfigError, load_config
from agentrl.eval import mean_pass_at_k, pass_at_k, self_correction_metrics
from agentrl.types import Step, Trajectory


def _episode(turns: int, success: bool, calls: int | None) -> Trajectory:
    info = {} if calls is None else {"tools/calls": calls}
    steps = [Step(action_text="a", action_span=(0, 1), info=dict(info)) for _ in range(turns)]
    return Trajectory(token_ids=[], loss_mask=[], logprobs=[], prompt_len=0, steps=steps,
                      success=success)


def test_success_counts_answers_after_searches_while_succ_at_1_does_not():
    # A 2-hop question answered right at turn 3, a 1-turn right answer, a wrong one.
    episodes = [_episode(3, True, 2), _episode(1, True, 0), _episode(2, False, 1)]
    metrics = self_correction_metrics(episodes, ks=(1, 5))
    assert metrics["success"] == 2 / 3
    assert metrics["succ@1"] == 1 / 3
    assert metrics["succ@5"] == 2 / 3
    assert metrics["mean_tool_calls"] == 1.0


def test_mean_tool_calls_is_absent_for_envs_without_tools():
    metrics = self_correction_metrics([_episode(1, True, None)], ks=(1,))
    assert "mean_tool_calls" not in metrics
    assert metrics["success"] == 1.0


# --- pass@k: the unbiased estimator ------------------------------------------------------------


def test_pass_at_k_on_worked_values():
    # n=5 samples, c=2 correct: pass@k = 1 - C(3, k) / C(5, k).
    assert pass_at_k(5, 2, 1) == pytest.approx(1 - 3 / 5)     # 0.4
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)    # 0.7
    assert pass_at_k(5, 2, 5) == 1.0                          # any 5 of 5 hold a correct one
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 5, 1) == 1.0


@pytest.mark.parametrize("n", [1, 2, 5, 10, 200])
def test_pass_at_k_equals_the_naive_estimate_where_it_must(n):
    for c in range(n + 1):
        assert pass_at_k(n, c, 1) == pytest.approx(c / n)          # k = 1: the success rate
        assert pass_at_k(n, c, n) == (1.0 if c else 0.0)           # k = n: any of the n
        # and the closed form with binomials, where they do not overflow
        for k in range(1, min(n, 30) + 1):
            exact = 1 - math.comb(n - c, k) / math.comb(n, k)
            assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_pass_at_k_is_stable_for_many_samples():
    # C(10000, 5000) overflows a float; the product form does not.
    value = pass_at_k(10_000, 3, 5_000)
    assert value == pytest.approx(1 - 0.5**3, abs=1e-3)


def test_pass_at_k_refuses_more_draws_than_samples():
    with pytest.raises(ValueError, match=r"pass@6 needs at least k=6 samples per task, got n=5"):
        pass_at_k(5, 2, 6)
    with pytest.raises(ValueError, match="c must be between 0 and n"):
        pass_at_k(5, 6, 1)


def test_mean_pass_at_k_leaves_out_tasks_short_of_k_samples():
    tasks = [[True, False, False, False], [False, False, False, False], [True, True]]
    mean, counted = mean_pass_at_k(tasks, 1)
    assert counted == 3 and mean == pytest.approx((1 / 4 + 0 + 1) / 3)
    mean, counted = mean_pass_at_k(tasks, 4)
    assert counted == 2 and mean == pytest.approx((1 + 0) / 2)
    assert math.isnan(mean_pass_at_k([[True]], 2)[0])


def test_pass_k_above_samples_is_a_config_error():
    with pytest.raises(ConfigError, match=r"pass@5 \(pass_k\) needs at least 5 episodes per task, and samples=2"):
        load_config(None, ["eval.samples=2", "eval.pass_k=[1,5]"])
    assert load_config(None, ["eval.samples=5", "eval.pass_k=[1,5]"]).eval.pass_k == [1, 5]


def test_the_run_table_shows_a_dash_where_nothing_was_measured():
    from agentrl.training.report import comparison_table

    metrics = {"success": 0.0, "succ@1": 0.0, "succ@5": 0.0, "unique_answer_ratio": float("nan"),
               "mean_turns": 1.0, "mean_return": 0.0, "infra_errors": 0}
    table = comparison_table({"before RL": metrics}, k=5)
    cells = {column.header: list(column.cells)[0] for column in table.columns}
    assert cells["unique-answer ratio"] == "-"  # no answers: not a ratio of 0, not "nan"
    assert cells["mean turns"] == "1.000" and cells["tool calls"] == "-"
