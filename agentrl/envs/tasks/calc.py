"""`agentrl/Calc-v0`: arithmetic too large to do in the head, solved by calling python.

    Question: What is 48213 * 9127 - 33871 * 52?
    <python>print(48213 * 9127 - 33871 * 52)</python>   ->  438272059
    <answer>438272059</answer>

The reward is 1 for the exact integer (commas and spaces ignored), else 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agentrl.envs.parsing import FormatSpec
from agentrl.envs.tool_env import Episode, Score, Task, ToolEnv
from agentrl.tools.python import PythonTool

SYSTEM_PROMPT = "Compute the exact result. Use the python tool, then answer with the number.\n{tools}"


def calc_task(rng: np.random.Generator, digits: int, num_operands: int) -> Task:
    numbers = [int(rng.integers(10 ** (digits - 1), 10**digits)) for _ in range(num_operands)]
    ops = [str(rng.choice(["+", "-", "*"])) for _ in range(num_operands - 1)]
    ops[0] = "*"  # at least one product, so the result is out of mental range
    expression = str(numbers[0]) + "".join(f" {op} {n}" for op, n in zip(ops, numbers[1:]))
    value = int(eval(expression, {"__builtins__": {}}))  # noqa: S307 - our own digits and operators
    return Task(prompt=f"Question: What is {expression}?", answer=value, id=expression,
                oracle=(("python", {"code": f"print({expression})"}), ("answer", {"answer": str(value)})))


def integer_reward(task: Task, episode: Episode) -> Score:
    try:
        correct = episode.answer is not None and int(episode.answer.replace(",", "").replace(" ", "")) == task.answer
    except ValueError:
        correct = False
    return Score(float(correct), correct)


class Calc(ToolEnv):
    """Large-number arithmetic with a python tool.

    Args:
        digits: digits per operand; num_operands: how many numbers.
        sandbox_backend, pool: where the interpreter runs (see `Code`).
        call_format, max_turns, max_tool_calls, call_timeout, render_mode: see `ToolEnv`.
    """

    def __init__(
        self,
        digits: int = 5,
        num_operands: int = 3,
        sandbox_backend: str = "auto",
        pool: Any = None,
        call_format: FormatSpec = "xml",
        max_turns: int = 3,
        max_tool_calls: int = 2,
        call_timeout: float = 30.0,
        render_mode: str | None = None,
    ) -> None:
        if digits < 1 or num_operands < 2:
            raise ValueError(f"need digits >= 1 and num_operands >= 2, got {digits}, {num_operands}")
        super().__init__(
            tools=[PythonTool(pool, backend=sandbox_backend, timeout=5.0)],
            tasks=lambda rng: calc_task(rng, digits, num_operands),
            reward_fn=integer_reward,
            call_format=call_format,
            max_turns=max_turns,
            max_tool_calls=max_tool_calls,
            max_calls_per_turn=1,
            call_timeout=call_timeout,
            system_prompt=SYSTEM_PROMPT,
            render_mode=render_mode,
        )
