"""The two workloads of benchmarks/vs_trl.py, in plain Python both environments import.

benchmarks/vs_trl.py runs agentrl in the project's venv and TRL in `.venv-trl`; both import this
module (it needs neither library), so the tool the model calls, the tasks and the reward are
literally the same code on both sides.

- single-turn arithmetic: "What is 3 + 5?", answered as `<answer>8</answer>` in one turn;
- multi-turn sum with a tool: "What is 3 + 5 + 7?", solved by calling `add` twice (3 + 5, then
  8 + 7), one call per turn, then answering: three turns, two tool results.
"""

from __future__ import annotations

import re

ARITHMETIC_SYSTEM = "Solve the problem. Give the result as <answer>number</answer>."
SUM_SYSTEM = ("Add the numbers with the add tool, two numbers per call and one call per turn, "
              "then give the result as <answer>number</answer>.")

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first integer.
        b: The second integer.
    """
    return int(a) + int(b)


def sum_question(numbers: list[int]) -> str:
    return "What is " + " + ".join(str(n) for n in numbers) + "?"


def final_answer(text: str) -> str | None:
    """The content of the first `<answer>...</answer>` of `text`, stripped; None without one."""
    found = _ANSWER.search(text or "")
    return found.group(1).strip() if found else None


def answer_reward(text: str, target: int) -> float:
    """1.0 when `text` answers `target` exactly, else 0.0 (a missing answer scores 0)."""
    answer = final_answer(text)
    try:
        return float(answer is not None and int(answer) == int(target))
    except ValueError:
        return 0.0
