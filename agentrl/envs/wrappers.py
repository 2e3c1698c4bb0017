"""Wrappers that change how an episode unfolds without touching the task itself.

A wrapper is a `TextEnv` holding another `TextEnv`; it forwards the prompt-building
attributes (system prompt, tool specs, stop strings) so the rollout engine sees one env.
Wrappers compose: `TryAgain(MyTask(...), max_turns=5)`.
"""

from __future__ import annotations

import copy
from typing import Any, SupportsFloat

from agentrl.algorithms import ufo_return
from agentrl.algorithms.ufo import TurnCounting
from agentrl.envs.base import TextEnv

#: The unary feedback of the UFO reference code (the paper writes "Try again").
DEFAULT_FEEDBACK = "Incorrect. Please think again."


class TextWrapper(TextEnv):
    """Base of agentrl wrappers: forwards everything to `env` unless overridden."""

    def __init__(self, env: TextEnv) -> None:
        self.env = env
        self.render_mode = env.render_mode
        self.observation_space = env.observation_space
        self.action_space = env.action_space
        self._transcript = []

    @property
    def system_prompt(self) -> str:  # type: ignore[override]
        return self.env.system_prompt

    @property
    def stop_strings(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.env.stop_strings)

    @property
    def tool_specs(self) -> tuple[dict[str, Any], ...]:  # type: ignore[override]
        return tuple(self.env.tool_specs)

    @property
    def observation_role(self) -> str:  # type: ignore[override]
        return self.env.observation_role

    @property
    def max_turns(self) -> int:  # type: ignore[override]
        return self.env.max_turns

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)  # seeds the wrapper's own np_random too
        return self.env.reset(seed=seed, options=options)

    def step(self, action: str):
        return self.env.step(action)

    def render(self) -> str | None:
        return self.env.render()

    def close(self) -> None:
        self.env.close()

    def fork(self) -> TextWrapper:
        """A copy around a fork of the wrapped env: the env knows how to copy what it holds
        (a tool env forks its sandboxes and shares its search index), which a deep copy of the
        wrapper would not."""
        twin = copy.copy(self)
        twin.env = self.env.fork()
        twin._transcript = list(self._transcript)
        twin._np_random = copy.deepcopy(self._np_random)
        return twin

    def oracle_action(self) -> str:
        return self.env.oracle_action()

    def mistaken_action(self) -> str:
        return self.env.mistaken_action()


class TryAgain(TextWrapper):
    """Multi-turn self-correction with unary feedback (UFO, arXiv 2507.14295).

    The wrapped env is a single-answer task: its `step` ends the episode and reports
    `info["success"]` and `info["answer"]` (None when the action held no well-formed answer).
    Every turn of the wrapper answers a fresh copy of the same task; after a wrong answer the
    whole observation is the fixed `feedback` text; a correct answer ends the episode, and so
    does the `max_turns`-th answer.

    Rewards: 0 on every turn but the last, which carries the UFO return of the whole episode
    (`agentrl.algorithms.ufo_return`): 2^-(t*-1) when first solved at turn t*, minus the
    repeated-answer penalty `lam * (1 - distinct/valid)`, minus `format_penalty` per turn
    whose answer was missing or malformed. `turn_counting` says which turns count: "reference"
    (only turns with a valid answer, as the reference code) or "paper" (every turn).
    `info["solved_turn"]` (1-based, or None) and `info["answers"]` feed Succ@k and the
    unique-answer ratio.
    """

    def __init__(
        self,
        env: TextEnv,
        max_turns: int = 5,
        feedback: str = DEFAULT_FEEDBACK,
        lam: float = 0.5,
        format_penalty: float = 0.1,
        turn_counting: TurnCounting = "reference",
    ) -> None:
        super().__init__(env)
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {max_turns}")
        if turn_counting not in ("reference", "paper"):
            raise ValueError(f"turn_counting must be 'reference' or 'paper', got {turn_counting!r}")
        self.turn_counting = turn_counting
        self._max_turns = max_turns
        self.feedback = feedback
        self.lam = lam
        self.format_penalty = format_penalty
        self._task: TextEnv | None = None
        self._base_anchor: Any = None
        self._turn = 0
        self._answers: list[str] = []
        self._malformed = 0
        self._done = True

    @property
    def max_turns(self) -> int:  # type: ignore[override]
        return self._max_turns

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        observation, info = super().reset(seed=seed, options=options)
        self._close_task()  # the previous episode's copy
        # A pristine copy of the task: every turn answers a fresh fork of it.
        self._task = self.env.fork()
        self._base_anchor = info.get("anchor")
        self._turn = 0
        self._answers = []
        self._malformed = 0
        self._done = False
        info = {**info, "anchor": (self._base_anchor, 0), "turn": 0}
        return observation, info

    def step(self, action: str) -> tuple[str, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._done or self._task is None:
            raise RuntimeError("step() called after the episode ended; call reset() first")
        attempt = self._task.fork()
        try:
            inner_obs, _, _, _, inner_info = attempt.step(action)
        finally:
            # The attempt may hold a sandbox or a browser session (a tool env under TryAgain):
            # give it back now, not when the run ends.
            attempt.close()
        self._turn += 1
        answer = inner_info.get("answer")
        valid = bool(inner_info.get("action_valid", True)) and answer is not None
        if valid:
            self._answers.append(str(answer))
        else:
            self._malformed += 1
        success = bool(inner_info.get("success", False))
        self._done = success or self._turn >= self._max_turns

        solved_turn = self._turn if success else None
        reward = 0.0
        if self._done:
            reward = ufo_return(self._answers, solved_turn, self._malformed,
                                lam=self.lam, format_penalty=self.format_penalty,
                                turn_counting=self.turn_counting)
        if success or self._done:
            observation = ""
        else:
            # A malformed answer keeps the task's own format message; a wrong one gets the
            # unary feedback and nothing else.
            observation = inner_obs if not valid and inner_obs else self.feedback
        info = {
            **inner_info,
            "anchor": (self._base_anchor, self._turn),
            "success": success,
            "action_valid": valid,
            "turn": self._turn,
            "solved_turn": solved_turn,
            "answers": list(self._answers),
            "malformed_turns": self._malformed,
        }
        return observation, reward, success, self._done and not success, info

    def close(self) -> None:
        self._close_task()
        super().close()

    def fork(self) -> TryAgain:
        twin = super().fork()
        twin._task = None if self._task is None else self._task.fork()
        twin._answers = list(self._answers)
        return twin

    def _close_task(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.close()

    def oracle_action(self) -> str:
        if self._task is None:
            raise RuntimeError("oracle_action() needs reset() first")
        return self._task.oracle_action()

    def mistaken_action(self) -> str:
        if self._task is None:
            raise RuntimeError("mistaken_action() needs reset() first")
        return self._task.mistaken_action()
