"""`TextEnv`: the Gymnasium contract every agentrl environment follows.

An agentrl environment is a `gymnasium.Env[str, str]`: observations and actions are text.
`reset(seed=...)` returns the first user message of the episode; `step(action_text)` takes the
model's whole turn (thought + tool calls or answer) and returns the next observation, which the
rollout engine appends to the conversation as a message with loss mask 0.

Everything a rollout engine needs to build prompts for any model lives on the env, not in
the engine:

- `system_prompt`: the system message (may be empty).
- `tool_specs`: OpenAI function specs of the env's tools (shown to the model by chat templates
  that support tools; empty for tool-free tasks and for call formats the system prompt already
  describes, such as XML tags).
- `stop_strings`: strings that end a generation turn (e.g. a closing tool-call tag), so the env
  sees one action at a time.
- `observation_role`: the chat role of observations ("user", or "tool" for tool results).

`info` keys with a fixed meaning (docs/custom_env.md lists them with what reads each one):

- `anchor`: a hashable key of the raw env state the agent is about to act on (GiGPO groups
  steps by it); returned by both `reset` and `step`.
- `success`: the task is solved.
- `action_valid`: the last action could be parsed (always True after reset).
- `tool_calls`: the tool calls the last action made (a list, possibly empty).
- `infra_error` (optional): a message saying the infrastructure failed during this step (a tool
  server down after its retries, a sandbox that died), not the policy. The rollout engine ends
  the episode there and marks the trajectory, which is then counted (`rollout/infra_errors`)
  and never trained on; a strategy may sample a replacement. An exception raised by `reset`
  or `step` is treated the same way.

Group members reset with the same seed see the same task, which is what makes GRPO groups.
"""

from __future__ import annotations

import copy
from typing import Any, Hashable

import gymnasium
from gymnasium import spaces

# Printable text of the Basic Multilingual Plane plus the whitespace models write. A Text space
# must list its characters; this one is wide enough for real text (code, prose, tool output).
_WHITESPACE = "\t\n\r"
_CHARSET = frozenset(
    _WHITESPACE
    + "".join(chr(c) for c in range(0x20, 0x7F))
    + "".join(chr(c) for c in range(0xA0, 0xD800))
    + "".join(chr(c) for c in range(0xE000, 0xFFFE))
)
#: Longest text an observation or action may hold; longer tool output must be truncated by
#: the tool (with a visible marker) before it reaches the env's observation.
TEXT_MAX_LENGTH = 65_536

# Building a Text space over ~63k characters costs milliseconds; envs are created by the
# hundred per batch, so every env gets a shallow copy of one prototype.
_TEXT_SPACE_PROTOTYPE = spaces.Text(max_length=TEXT_MAX_LENGTH, min_length=0, charset=_CHARSET)


def text_space() -> spaces.Text:
    """A fresh `gymnasium.spaces.Text` over printable text (shares its tables, not its RNG)."""
    space = copy.copy(_TEXT_SPACE_PROTOTYPE)
    space._np_random = None
    return space


def to_text(value: str) -> str:
    """Make `value` a member of the text space: drop characters outside it, cut to max length."""
    if all(c in _CHARSET for c in value):
        return value[:TEXT_MAX_LENGTH]
    return "".join(c if c in _CHARSET else "\ufffd" for c in value)[:TEXT_MAX_LENGTH]


class EnvForkError(RuntimeError):
    """Raised by `fork()` of an env that cannot copy its state.

    The rollout engine then falls back to replaying the action prefix on a fresh env.
    """


class TextEnv(gymnasium.Env[str, str]):
    """Base class of agentrl environments: text in, text out.

    Subclasses implement `reset` and `step` (calling `super().reset(seed=seed)` first so that
    `self.np_random` is seeded) and set the class attributes below as they need.
    """

    metadata: dict[str, Any] = {"render_modes": ["ansi"]}

    system_prompt: str = ""
    stop_strings: tuple[str, ...] = ()
    tool_specs: tuple[dict[str, Any], ...] = ()
    observation_role: str = "user"
    #: Upper bound on turns per episode; the rollout engine also enforces it.
    max_turns: int = 1

    def __init__(self, render_mode: str | None = None) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode={render_mode!r} is not supported; use one of "
                f"{self.metadata['render_modes']} or None"
            )
        self.render_mode = render_mode
        self.observation_space = text_space()
        self.action_space = text_space()
        self._transcript: list[tuple[str, str]] = []

    # reset(seed=, options=) and step(action) come from the subclass; its reset calls
    # super().reset(seed=seed) first so that self.np_random is seeded.

    def render(self) -> str | None:
        """ANSI rendering: the conversation so far as plain text."""
        if self.render_mode != "ansi":
            return None
        return "\n".join(f"[{who}] {text}" for who, text in self._transcript)

    # --- agentrl additions -------------------------------------------------------------------

    def fork(self) -> "TextEnv":
        """An independent copy of this env in the same state (a deep copy by default).

        Branching strategies (Tree-GRPO, ARPO) continue a branch from the copy. Envs holding
        resources that cannot be deep-copied (sandboxes, servers) override this, or raise
        `EnvForkError` so the engine replays the action prefix on a fresh env instead.
        """
        # The Text spaces are large immutable tables: share them instead of copying them.
        memo = {id(self.observation_space): self.observation_space,
                id(self.action_space): self.action_space}
        try:
            return copy.deepcopy(self, memo)
        except Exception as exc:  # pragma: no cover - depends on the subclass
            raise EnvForkError(f"{type(self).__name__} cannot be deep-copied: {exc}") from exc

    def oracle_action(self) -> str:
        """An action that a perfect agent would take now (used to write SFT demonstrations).

        Envs without an oracle raise NotImplementedError.
        """
        raise NotImplementedError(f"{type(self).__name__} has no oracle policy")

    def mistaken_action(self) -> str:
        """A plausible wrong action, for demonstrations of recovering from a mistake.

        Optional; envs without it raise NotImplementedError.
        """
        raise NotImplementedError(f"{type(self).__name__} has no mistaken_action()")

    def _record(self, who: str, text: str) -> None:
        self._transcript.append((who, text))


def make_info(
    anchor: Hashable,
    *,
    success: bool = False,
    action_valid: bool = True,
    tool_calls: list[Any] | None = None,
    **metrics: Any,
) -> dict[str, Any]:
    """The `info` dict with the keys of fixed meaning filled in."""
    return {
        "anchor": anchor,
        "success": bool(success),
        "action_valid": bool(action_valid),
        "tool_calls": list(tool_calls or []),
        **metrics,
    }
