"""Plain dataclasses shared by every room of agentrl.

Nothing here imports anything else of agentrl, so every room may import this module.

Data flow (one training iteration): a Generator returns `Completion`s; the rollout engine turns
completions and env observations into `Trajectory`s made of `Step`s; trajectories of one task
form a `Group`; algorithms read rewards, group ids and anchors from them; the trainer reads
token ids, loss masks and behaviour log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Literal

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "eos", "length"]


@dataclass
class Message:
    """One chat message. `role` follows the OpenAI / ChatML convention."""

    role: str
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass
class SamplingParams:
    """How a Generator samples one completion per prompt.

    `stop` strings end a turn (e.g. at a closing tool-call tag); the stop string itself is kept
    in the completion, so the action text that reaches the env is complete.
    `top_logprobs` > 0 asks for the k largest log-probs at every sampled position (ARPO uses
    them to measure step entropy).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    stop: list[str] = field(default_factory=list)
    top_logprobs: int = 0
    seed: int | None = None


@dataclass
class Completion:
    """What a Generator returns for one prompt: token ids in, token ids out.

    `logprobs[i]` is the log-probability of `token_ids[i]` under the sampling distribution
    (after temperature, before top-p truncation), so that it matches a fresh forward pass of
    the same weights at the same temperature. `prompt_cached_tokens` counts the prompt tokens
    the generator did not compute for this row: taken from its prefix cache, or from an
    identical prompt of the same batch that was computed once for both.
    """

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    text: str = ""
    stop_string: str | None = None
    top_logprobs: list[list[float]] | None = None
    prompt_cached_tokens: int = 0


@dataclass
class Step:
    """One agent turn inside a trajectory.

    `action_span` and `observation_span` are half-open [start, end) ranges into the
    trajectory's `token_ids`. Only the action span carries loss mask 1.
    """

    action_text: str
    action_span: tuple[int, int]
    observation: str = ""
    observation_span: tuple[int, int] = (0, 0)
    reward: float = 0.0
    anchor: Hashable = None
    action_valid: bool = True
    finish_reason: str = "stop"
    info: dict[str, Any] = field(default_factory=dict)
    #: this turn's node in its group's rollout tree (assigned by the engine; a branch's
    #: inherited turns keep their parent's node ids, so equal ids mean the same turn)
    node_id: int = 0


@dataclass
class Trajectory:
    """One episode of one agent, in token space, with everything training needs.

    Invariants (checked by tests):
    - len(token_ids) == len(loss_mask) == len(logprobs)
    - loss_mask[i] == 1 only for tokens the policy sampled; logprobs[i] is their behaviour
      log-prob, 0.0 elsewhere.
    - node_path == tuple(step.node_id for step in steps): the nodes (turns) from the root to this
      leaf. Trajectories of one group whose node paths start alike share those turns token for
      token; `tree_id` names the tree of the group the trajectory belongs to (chain rollouts:
      one tree per trajectory).
    - branched_from == (source traj_id, k) for a branch that continued trajectory `source`
      after its turn k (its first k steps are the source's), None for a rollout from the prompt.
    """

    token_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float]
    prompt_len: int
    messages: list[Message] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    reward: float = 0.0
    success: bool = False
    group_id: int = 0
    traj_id: int = 0
    tree_id: int = 0
    node_path: tuple[int, ...] = ()
    branched_from: tuple[int, int] | None = None
    task: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_turns(self) -> int:
        return len(self.steps)

    @property
    def infra_error(self) -> str | None:
        """Why the infrastructure (an env crash, a tool or sandbox failure) ended this
        trajectory, or None. Such a trajectory says nothing about the policy: it is counted,
        never trained on or scored."""
        return self.info.get("infra_error") or None

    @property
    def num_action_tokens(self) -> int:
        return int(sum(self.loss_mask))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (used for the run directory's trajectory samples and the viewer)."""
        return {
            "group_id": self.group_id,
            "traj_id": self.traj_id,
            "tree_id": self.tree_id,
            "node_path": list(self.node_path),
            "branched_from": list(self.branched_from) if self.branched_from else None,
            "reward": self.reward,
            "success": self.success,
            "task": self.task,
            "messages": [m.to_dict() for m in self.messages],
            "steps": [
                {
                    "action": s.action_text,
                    "observation": s.observation,
                    "reward": s.reward,
                    "action_valid": s.action_valid,
                    "anchor": repr(s.anchor),
                    "action_span": list(s.action_span),
                    "finish_reason": s.finish_reason,
                    "node_id": s.node_id,
                }
                for s in self.steps
            ],
            "num_tokens": len(self.token_ids),
            "num_action_tokens": self.num_action_tokens,
            "info": {k: v for k, v in self.info.items() if isinstance(v, (int, float, str, bool))},
        }


@dataclass
class Group:
    """All trajectories sampled for one task (same env id, same seed)."""

    group_id: int
    task: dict[str, Any]
    trajectories: list[Trajectory] = field(default_factory=list)
    budget: dict[str, float] = field(default_factory=dict)

    @property
    def rewards(self) -> list[float]:
        return [t.reward for t in self.trajectories]
