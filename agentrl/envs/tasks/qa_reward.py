"""Rewards for question answering: exact match, token F1, and ARPO's format-aware F1.

Answers are normalized as in SQuAD and Search-R1: lowercase, punctuation and the articles
a/an/the removed, whitespace collapsed. A question may have several golden answers; the best
match counts.

Modes (`qa_reward(mode)`):

- "em" (default, Search-R1): 1 if the answer exactly matches a golden answer, else 0.
- "f1": token F1 against the best golden answer.
- "arpo" (docs/algorithms.md, ARPO): -1 if the format is invalid, 0 if F1 is 0, F1 otherwise,
  F1 + 0.1 if both the search and the python tools were used. The format is invalid when the
  episode ended without an answer or any turn was an invalid action (an empty
  `<answer></answer>` is one).

In every mode an episode counts as a success when the answer exactly matches.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Iterable, Literal

from agentrl.envs.tool_env import Episode, RewardFn, Score, Task

RewardMode = Literal["em", "f1", "arpo"]
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, golden: Iterable[str]) -> bool:
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(g) for g in golden)


def token_f1(prediction: str, golden: Iterable[str]) -> float:
    """The best token-level F1 of `prediction` against any golden answer."""
    pred_tokens = normalize_answer(prediction).split()
    best = 0.0
    for answer in golden:
        gold_tokens = normalize_answer(answer).split()
        common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
        if common == 0:
            continue
        precision, recall = common / len(pred_tokens), common / len(gold_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def golden_answers(task: Task) -> tuple[str, ...]:
    answer = task.answer
    return (answer,) if isinstance(answer, str) else tuple(answer)


def qa_reward(mode: RewardMode = "em") -> RewardFn:
    """A reward function for QA tasks whose `Task.answer` is a string or a list of strings."""
    if mode not in ("em", "f1", "arpo"):
        raise ValueError(f"unknown QA reward mode {mode!r}; use 'em', 'f1' or 'arpo'")

    def reward(task: Task, episode: Episode) -> Score:
        golden = golden_answers(task)
        answer = episode.answer
        success = answer is not None and exact_match(answer, golden)
        if mode == "em":
            return Score(float(success), success)
        f1 = token_f1(answer, golden) if answer is not None else 0.0
        if mode == "f1":
            return Score(f1, success)
        if answer is None or episode.invalid_actions > 0:
            return Score(-1.0, False)
        if f1 == 0.0:
            return Score(0.0, False)
        both_tools = episode.tool_calls["search"] > 0 and episode.tool_calls["python"] > 0
        return Score(f1 + (0.1 if both_tools else 0.0), success)

    reward.__name__ = f"qa_reward_{mode}"
    return reward
