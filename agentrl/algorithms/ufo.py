"""UFO: unary feedback as observation (arXiv 2507.14295).

Multi-turn self-correction on single-answer tasks: after a wrong answer the env replies with a
fixed unary text ("Incorrect. Please think again." in the reference code) and the agent tries
again, for at most T_max turns. The episode return rewards early success and penalizes
repeating the same answer:

    return = 2^-(k - 1) if the k-th counted turn gave the first correct answer, else 0
             - lam * (1 - E / T)        E = distinct normalized answers, T = valid answers
             - format_penalty * (turns whose answer was missing or malformed)

Which turns count (`turn_counting`):

- "reference" (default, the reference code): only turns with a valid answer count. A
  malformed turn does not advance the decay (malformed, then correct: 1.0 - 0.1 = 0.9), and
  the repetition penalty is charged when the env ends the episode itself, that is on a correct
  answer or after T_max valid answers. An unsolved episode with malformed turns hits the turn
  limit before that, so it carries the format penalty only.
- "paper": every turn counts. The decay follows the turn number (malformed, then correct:
  0.5 - 0.1 = 0.4) and every episode carries the repetition penalty over its valid answers.

Defaults are the paper's and the reference code's: lam = 0.5, format_penalty = 0.1. Answers
are compared after `normalize_answer` (lowercase, all whitespace deleted), so " 4" and "4" are
the same answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

TurnCounting = Literal["reference", "paper"]


def normalize_answer(text: str) -> str:
    """UFO answer normalization: lowercase and delete every whitespace character.

    >>> normalize_answer("  New York\\n")
    'newyork'
    """
    return "".join(text.lower().split())


def ufo_return(
    answers: Sequence[str],
    solved_turn: int | None,
    malformed_turns: int = 0,
    *,
    lam: float = 0.5,
    format_penalty: float = 0.1,
    turn_counting: TurnCounting = "reference",
) -> float:
    """Return of one UFO episode.

    Args:
        answers: the valid answers given, in turn order (raw text; normalized here). Turns
            without a parseable answer are not listed here but counted in `malformed_turns`.
        solved_turn: 1-based turn of the first correct answer, or None if never solved. The
            correct answer ends the episode, so it is the last of `answers` and
            solved_turn == len(answers) + malformed_turns.
        malformed_turns: number of turns whose answer was missing or malformed.
        lam: weight of the answer-diversity penalty (1 - E / T); 0 when there is no answer.
        format_penalty: subtracted once per malformed turn.
        turn_counting: "reference" (only valid answers count) or "paper" (every turn counts);
            see the module docstring.

    >>> round(ufo_return(["4", " 4", "5"], solved_turn=3), 6)
    0.083333
    >>> ufo_return(["7"], solved_turn=2, malformed_turns=1)  # malformed, then correct
    0.9
    >>> ufo_return(["7"], solved_turn=2, malformed_turns=1, turn_counting="paper")
    0.4
    """
    if turn_counting not in ("reference", "paper"):
        raise ValueError(f"turn_counting must be 'reference' or 'paper', got {turn_counting!r}")
    if any(answer is None for answer in answers):
        raise ValueError(
            "answers must hold only valid answers; count turns without an answer in "
            "malformed_turns instead of passing None"
        )
    if malformed_turns < 0:
        raise ValueError(f"malformed_turns must be >= 0, got {malformed_turns}")
    if solved_turn is not None and solved_turn < 1:
        raise ValueError(f"solved_turn is 1-based (first turn = 1) or None, got {solved_turn}")
    if solved_turn is not None and solved_turn != len(answers) + malformed_turns:
        raise ValueError(
            f"solved_turn={solved_turn} but {len(answers)} answers and {malformed_turns} "
            "malformed turns were given; the correct answer ends the episode, so it must be "
            "the last of answers and solved_turn = len(answers) + malformed_turns"
        )
    total = len(answers)
    distinct = len({normalize_answer(answer) for answer in answers})
    repetition = lam * (1.0 - distinct / total) if total > 0 else 0.0
    if turn_counting == "paper":
        success = 0.0 if solved_turn is None else 2.0 ** -(solved_turn - 1)
    else:
        # Only valid answers advance the decay; the correct answer is the last of them.
        success = 0.0 if solved_turn is None else 2.0 ** -(total - 1)
        if solved_turn is None and malformed_turns > 0:
            repetition = 0.0  # cut off by the turn limit before the env charged it
    return success - repetition - format_penalty * malformed_turns
