"""Text of an env's own episodes, to train the tiny model's tokenizer on (`agentrl.models.tiny`).

One ChatML text per seed: the system prompt (with the tool specs when the chat template shows
them), the reset observation and the env's feedback to a malformed action, then the rest of an
episode from the most faithful source the env offers:

1. `oracle_transcript()`: an env whose oracle would run tools in sandboxes (Code-v0) writes its
   oracle episode itself, with the tool output the oracle's program prints. No sandbox starts,
   which matters because the corpus has thousands of episodes.
2. `oracle_action()`: the oracle episode, played.
3. Neither (the oracle is optional): the env's feedback to empty turns until the episode ends,
   so the tokenizer still knows every text the env shows. Such an env has no demonstrations
   for SFT (`sft.demos` must be 0).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

#: A turn no env accepts; the env's answer to it is feedback the model will read.
MALFORMED_ACTION = "I am not sure."
#: What an env without an oracle is sent, turn after turn, to see its feedback.
EMPTY_ACTION = ""


@runtime_checkable
class WritesOracleTranscript(Protocol):
    """An env that writes its oracle episode without playing it (without running tools)."""

    def oracle_transcript(self) -> list[tuple[str, str]]:
        """The oracle episode after `reset()`, as (role, text) messages: the oracle's turns
        ("assistant") and the env's observations (its `observation_role`), exactly as playing
        the oracle would show them."""
        ...


def chatml(role: str, content: str) -> str:
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


def has_oracle(env: Any) -> bool:
    """Whether the env, after `reset()`, can say what its oracle would do now."""
    try:
        env.oracle_action()
    except NotImplementedError:
        return False
    return True


def env_corpus(make_env: Callable[[], Any], seeds: Iterable[int], *, max_turns: int = 8) -> list[str]:
    """One ChatML-formatted text per seed (see the module docstring for what it holds)."""
    texts = []
    for seed in seeds:
        env = make_env()
        try:
            texts.append(episode_text(env, int(seed), max_turns=max_turns))
        finally:
            env.close()
    return texts


def episode_text(env: Any, seed: int, *, max_turns: int = 8) -> str:
    """The ChatML text of one episode of `env` from `reset(seed=seed)` (the env is left open)."""
    observation, _ = env.reset(seed=seed)
    parts = [chatml("system", _system_text(env))] if env.system_prompt or env.tool_specs else []
    parts.append(chatml("user", observation))
    feedback = _feedback_to_malformed_action(env)
    if feedback:
        parts.append(chatml("user", feedback))
    if isinstance(env, WritesOracleTranscript):
        messages = env.oracle_transcript()
    else:
        messages = _played_oracle(env, max_turns)
        if messages is None:
            messages = _feedback_to_empty_turns(env, max_turns)
    parts.extend(chatml(role, text) for role, text in messages)
    return "".join(parts)


def _system_text(env: Any) -> str:
    """The system message as the tiny model's chat template renders it (tools appended)."""
    if not env.tool_specs:
        return env.system_prompt
    tools = "# Tools\n\nYou may call these tools:\n" + "".join(
        json.dumps(spec, ensure_ascii=False) + "\n" for spec in env.tool_specs)
    return f"{env.system_prompt}\n\n{tools}" if env.system_prompt else tools


def _feedback_to_malformed_action(env: Any) -> str:
    """What the env answers to a malformed turn, from a fork (the episode goes on untouched)."""
    try:
        probe = env.fork()
    except Exception:  # noqa: BLE001 - the probe is only a nicety for the tokenizer
        return ""
    try:
        return probe.step(MALFORMED_ACTION)[0]
    except Exception:  # noqa: BLE001
        return ""
    finally:
        probe.close()


def _played_oracle(env: Any, max_turns: int) -> list[tuple[str, str]] | None:
    """The oracle episode, played; None when the env has no oracle."""
    messages: list[tuple[str, str]] = []
    for turn in range(max_turns):
        try:
            action = env.oracle_action()
        except NotImplementedError:
            if turn == 0:
                return None
            raise
        observation, _, terminated, truncated, _ = env.step(action)
        messages.append(("assistant", action))
        if terminated or truncated:
            break
        messages.append((env.observation_role, observation))
    return messages


def _feedback_to_empty_turns(env: Any, max_turns: int) -> list[tuple[str, str]]:
    """The env's observations when every turn is empty, until the episode ends: what an env
    without an oracle shows a model that has not learned its format yet."""
    messages: list[tuple[str, str]] = []
    for _ in range(max_turns):
        observation, _, terminated, truncated, _ = env.step(EMPTY_ACTION)
        if observation:
            messages.append((env.observation_role, observation))
        if terminated or truncated:
            break
    return messages
