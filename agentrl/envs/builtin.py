"""Registration of the built-in tool-free envs."""

from __future__ import annotations

from agentrl.envs.registry import register

register(
    "agentrl/Arithmetic-v0",
    "agentrl.envs.arithmetic:Arithmetic",
    "Single-turn arithmetic answered in <answer>...</answer> (digits, operands, operators).",
)
register(
    "agentrl/ArithmeticTryAgain-v0",
    "agentrl.envs.builtin:make_arithmetic_try_again",
    "Arithmetic with UFO unary feedback: answer again after a wrong answer, up to max_turns.",
)


def make_arithmetic_try_again(max_turns: int = 5, render_mode: str | None = None,
                              turn_counting: str = "reference", **task_kwargs):
    """Multi-turn Arithmetic: `TryAgain(Arithmetic(**task_kwargs), max_turns, turn_counting)`."""
    from agentrl.envs.arithmetic import Arithmetic
    from agentrl.envs.wrappers import TryAgain

    return TryAgain(Arithmetic(render_mode=render_mode, **task_kwargs), max_turns=max_turns,
                    turn_counting=turn_counting)
