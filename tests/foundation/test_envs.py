"""The TextEnv contract, the Arithmetic task and the TryAgain (UFO) wrapper."""

from __future__ import annotations

import gymnasium
import pytest
from gymnasium.utils.env_checker import check_env

from agentrl.envs import TextEnv, UnknownEnvError, make_env, registered_envs
from agentrl.envs.wrappers import DEFAULT_FEEDBACK


@pytest.mark.parametrize("env_id", sorted(registered_envs()))
def test_every_builtin_env_passes_gymnasium_check_env(env_id):
    env = gymnasium.make(env_id).unwrapped
    try:
        check_env(env, skip_render_check=True)
        _, info = env.reset(seed=0)
        for key in ("anchor", "success", "action_valid", "tool_calls"):
            assert key in info, f"{env_id} reset info lacks {key}"
        hash(info["anchor"])
    finally:
        env.close()


def test_builtin_ids_include_the_foundation_envs():
    assert {"agentrl/Arithmetic-v0", "agentrl/ArithmeticTryAgain-v0"} <= set(registered_envs())


def test_unknown_env_id_lists_the_known_ones():
    with pytest.raises(UnknownEnvError, match="agentrl/Arithmetic-v0"):
        make_env("agentrl/Nope-v0")


def test_same_seed_same_task_and_difficulty_knobs():
    env = make_env("agentrl/Arithmetic-v0", digits=3, num_operands=3, operators="+*")
    q1, _ = env.reset(seed=7)
    q2, _ = env.reset(seed=7)
    q3, _ = env.reset(seed=8)
    assert q1 == q2 and q1 != q3
    env.reset(seed=7)
    numbers = [tok for tok in q1.removeprefix("What is ").removesuffix("?").split() if tok.isdigit()]
    assert len(numbers) == 3 and all(len(n) == 3 for n in numbers)
    expression = q1.removeprefix("What is ").removesuffix("?")
    assert env.oracle_action() == f"<answer>{eval(expression)}</answer>"


def test_unparseable_action_is_invalid_with_a_message_not_an_exception():
    env = make_env("agentrl/Arithmetic-v0")
    env.reset(seed=0)
    observation, reward, terminated, truncated, info = env.step("I think it is 5")
    assert info["action_valid"] is False and reward == 0.0 and terminated
    assert "<answer>" in observation


def test_try_again_feedback_turn_limit_and_ufo_return():
    env = make_env("agentrl/ArithmeticTryAgain-v0", max_turns=5)
    env.reset(seed=3)
    right = env.oracle_action()
    wrong = "<answer>-12345</answer>"
    obs, r, term, trunc, info = env.step(wrong)
    assert obs == DEFAULT_FEEDBACK and r == 0.0 and not term and not trunc
    obs, r, term, trunc, info = env.step(" " + wrong.replace("-", " -"))  # same answer, normalized
    obs, r, term, trunc, info = env.step("no answer here")
    assert info["action_valid"] is False and "<answer>" in obs
    obs, r, term, trunc, info = env.step(right)
    assert term and info["success"] and info["solved_turn"] == 4
    # The correct answer is the third valid one (the malformed turn does not count):
    # 2^-(3-1) - 0.5 * (1 - distinct/valid) - 0.1 * malformed = 0.25 - 0.5 * (1 - 2/3) - 0.1
    assert r == pytest.approx(0.25 - 0.5 * (1 - 2 / 3) - 0.1)


def test_try_again_ends_after_max_turns_unsolved():
    env = make_env("agentrl/ArithmeticTryAgain-v0", max_turns=2)
    env.reset(seed=1)
    env.step("<answer>-1</answer>")
    obs, r, term, trunc, info = env.step("<answer>-2</answer>")
    assert trunc and not term and info["solved_turn"] is None
    assert r == pytest.approx(0.0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step("<answer>1</answer>")


def test_fork_is_independent():
    env = make_env("agentrl/ArithmeticTryAgain-v0")
    env.reset(seed=4)
    env.step("<answer>-1</answer>")
    branch = env.fork()
    assert isinstance(branch, TextEnv)
    branch.step(branch.oracle_action())
    # the original still has its own turn counter and can go on
    _, _, _, _, info = env.step("<answer>-2</answer>")
    assert info["turn"] == 2 and info["answers"] == ["-1", "-2"]


def test_try_again_closes_every_copy_of_the_task_it_makes():
    """Each turn answers a fork of the task; a fork may hold a sandbox, so each is closed."""
    from agentrl.envs.arithmetic import Arithmetic
    from agentrl.envs.wrappers import TryAgain

    copies: list[Arithmetic] = []

    class CountedCopies(Arithmetic):
        closed = False

        def fork(self):
            twin = super().fork()
            copies.append(twin)
            return twin

        def close(self):
            self.closed = True
            super().close()

    env = TryAgain(CountedCopies(), max_turns=3)
    for seed in range(2):
        env.reset(seed=seed)
        env.step("<answer>-1</answer>")
        env.step("<answer>-2</answer>")
        # Open: only the task's pristine copy, kept for the next turn.
        assert len([c for c in copies if not c.closed]) == 1
    env.close()
    assert all(c.closed for c in copies) and len(copies) == 2 * 3
