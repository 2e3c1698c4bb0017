"""`Episode`: the live state of one trajectory while the engine drives it.

An episode owns its env and the token-space conversation built so far. It becomes a
`Trajectory` when it ends. A branch (`RolloutEngine` makes them, see `agentrl.rollout.context`)
starts as `parent.prefix(k, env, traj_id)`: the parent's first k turns copied exactly, with an
env already in the state after turn k, so the shared prefix and its tool results are inherited,
never recomputed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from agentrl.types import Message, Step, Trajectory


@dataclass
class Episode:
    env: Any
    #: the ChatTemplater for this env's tool specs (chosen once, shared by branches)
    templater: Any
    token_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float]
    prompt_len: int
    messages: list[Message]
    task: dict[str, Any]
    group_id: int
    traj_id: int
    anchor: Any = None
    tree_id: int = 0
    steps: list[Step] = field(default_factory=list)
    done: bool = False
    success: bool = False
    truncated: bool = False
    last_info: dict[str, Any] = field(default_factory=dict)
    #: set when the infrastructure (an env crash, a tool or sandbox failure) ended the episode
    infra_error: str | None = None
    #: (source trajectory id, turn) this episode was branched from; None for a fresh rollout
    branched_from: tuple[int, int] | None = None
    #: strategy-owned scratch space (e.g. ARPO's entropy baseline)
    scratch: dict[str, Any] = field(default_factory=dict)

    @property
    def turns(self) -> int:
        return len(self.steps)

    @property
    def node_path(self) -> tuple[int, ...]:
        """The node ids of this episode's turns, first turn first."""
        return tuple(step.node_id for step in self.steps)

    def prefix(self, at_turn: int, env: Any, traj_id: int) -> "Episode":
        """A new live episode holding this one's first `at_turn` turns exactly (tokens, loss
        mask, log-probs, messages, steps) and `env`, which must already be in the state after
        that turn (the engine forks or replays it). The engine's `branch()` calls this.
        """
        if not 0 <= at_turn <= self.turns:
            raise ValueError(f"at_turn={at_turn}: episode {self.group_id}/{self.traj_id} has "
                             f"{self.turns} turns, so a branch starts after turn 0..{self.turns}")
        if at_turn == self.turns and self.done:
            raise ValueError(f"at_turn={at_turn}: episode {self.group_id}/{self.traj_id} ended at "
                             f"that turn, so there is nothing to continue; branch at 0..{self.turns - 1}")
        # Where the prompt for turn at_turn + 1 ends: after turn at_turn's observation delta
        # (which holds the next generation prompt), or the initial prompt for at_turn == 0.
        end = self.steps[at_turn - 1].observation_span[1] if at_turn else self.prompt_len
        # Messages: the head (system prompt, task), then (assistant, observation) per turn.
        head = self._first_action_message() if self.steps else len(self.messages)
        messages = self.messages[:head + 2 * at_turn]
        # The state after turn at_turn: the anchor the next turn saw, the info that turn returned.
        anchor = self.steps[at_turn].anchor if at_turn < self.turns else self.anchor
        info = dict(self.steps[at_turn - 1].info) if at_turn else {}
        return Episode(
            env=env,
            templater=self.templater,
            token_ids=self.token_ids[:end],
            loss_mask=self.loss_mask[:end],
            logprobs=self.logprobs[:end],
            prompt_len=self.prompt_len,
            messages=list(messages),
            task=self.task,
            group_id=self.group_id,
            traj_id=traj_id,
            anchor=anchor,
            tree_id=self.tree_id,
            steps=copy.deepcopy(self.steps[:at_turn]),
            success=bool(info.get("success", False)),
            last_info=info,
            branched_from=(self.traj_id, at_turn),
        )

    def _first_action_message(self) -> int:
        """Index of the first assistant message (the messages before it are the head)."""
        return next(i for i, m in enumerate(self.messages) if m.role == "assistant")

    def to_trajectory(self) -> Trajectory:
        return Trajectory(
            token_ids=self.token_ids,
            loss_mask=self.loss_mask,
            logprobs=self.logprobs,
            prompt_len=self.prompt_len,
            messages=self.messages,
            steps=self.steps,
            reward=float(sum(s.reward for s in self.steps)),
            success=self.success,
            group_id=self.group_id,
            traj_id=self.traj_id,
            tree_id=self.tree_id,
            node_path=self.node_path,
            branched_from=self.branched_from,
            task=self.task,
            info={
                "truncated": self.truncated,
                "turns": self.turns,
                **{k: v for k, v in self.last_info.items()
                   if k not in ("anchor", "tool_calls") and isinstance(v, (int, float, bool, str))},
                "solved_turn": self.last_info.get("solved_turn"),
                "answers": self.last_info.get("answers"),
                **({"infra_error": self.infra_error} if self.infra_error else {}),
            },
        )
