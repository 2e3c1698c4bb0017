"""`Episode`: the live state of one trajectory while the engine drives it.

An episode owns its env and the token-space conversation built so far. It becomes a
`Trajectory` when it ends. Branching strategies call `fork()`: the branch copies the tokens,
masks and log-probs, and forks the env (tool state included), so the shared prefix and its tool
results are inherited, never recomputed.
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
    node_path: tuple[int, ...] = ()
    steps: list[Step] = field(default_factory=list)
    done: bool = False
    success: bool = False
    truncated: bool = False
    last_info: dict[str, Any] = field(default_factory=dict)
    #: set when the infrastructure (an env crash, a tool or sandbox failure) ended the episode
    infra_error: str | None = None
    #: strategy-owned scratch space (e.g. ARPO's entropy baseline)
    scratch: dict[str, Any] = field(default_factory=dict)

    @property
    def turns(self) -> int:
        return len(self.steps)

    def fork(self, traj_id: int) -> "Episode":
        """A branch continuing from this exact point (tokens copied, env forked)."""
        return Episode(
            env=self.env.fork(),
            templater=self.templater,
            token_ids=list(self.token_ids),
            loss_mask=list(self.loss_mask),
            logprobs=list(self.logprobs),
            prompt_len=self.prompt_len,
            messages=list(self.messages),
            task=self.task,
            group_id=self.group_id,
            traj_id=traj_id,
            anchor=self.anchor,
            tree_id=self.tree_id,
            node_path=self.node_path,
            steps=copy.deepcopy(self.steps),
            done=self.done,
            success=self.success,
            truncated=self.truncated,
            last_info=dict(self.last_info),
            scratch=copy.deepcopy(self.scratch),
        )

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
