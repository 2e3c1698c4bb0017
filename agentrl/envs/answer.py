"""Extracting the final answer from an action: `<answer>...</answer>`."""

from __future__ import annotations

import re

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)

#: The message a model sees when its turn holds no well-formed answer.
MISSING_ANSWER_MESSAGE = "Invalid action: put your final answer inside <answer>...</answer>."


def extract_answer(action: str) -> str | None:
    """The text of the last `<answer>...</answer>` in `action`, stripped; None if there is none
    or it is empty (an empty answer is a malformed one, as in `agentrl.envs.parsing`)."""
    found = _ANSWER.findall(action)
    if not found:
        return None
    return found[-1].strip() or None
