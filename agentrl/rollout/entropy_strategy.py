"""ARPO's sampling (Dong et al., "Agentic Reinforced Policy Optimization", arXiv 2507.19849):
branch a rollout where the model turns uncertain right after a tool result.

Per task, `initial` rollouts start from the prompt; the task's group grows to `n` rollouts by
branching. After every round:

1. The step entropy of each segment just generated (`arpo_step_entropy`: the first
   `entropy_tokens` positions, their top-`entropy_top_k` log-probs, -sum p log p summed, over
   log |V|). A rollout's first measured entropy is its baseline H0; a branch is a new rollout,
   so its baseline is the entropy of its own first segment (the one right after the tool result
   it was branched at), as in the reference code.
2. Every rollout whose round ended at a tool call (it called a tool and goes on) is a source,
   visited in trajectory-id order. Each source draws up to `beam - 1` coins, each heads with
   P = clip(p0 + beta * (H - H0), 0, 1), and each heads makes one branch, while the task holds
   fewer than `n` rollouts. A branch continues the live episode right after the tool result:
   same tokens, its env a fork of the live one (sandbox state copied, no call run again).
3. When every rollout of a task has finished short of `n`, one fresh rollout from the prompt
   starts (one per round), so each task ends with `n` rollouts.

The coins come from the rollout's seed (`RolloutContext.rng(group, source, turn)`), so a seed
fixes where the branches are.

Entropy over which log-probs: the reference reads vLLM's returned top-k' log-probs, which also
hold the sampled token's when it is outside the top k' (k' + 1 entries at such a position).
`entropy_logprobs="reference"` (the default) adds the sampled token's log-prob in that case;
`"strict"` uses exactly the k' largest.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal, Sequence

from agentrl.algorithms.arpo import arpo_branch_probability, arpo_step_entropy
from agentrl.rollout.context import EpisodeRequest, RolloutContext
from agentrl.rollout.episode import Episode
from agentrl.types import Completion, SamplingParams

EntropyLogprobs = Literal["reference", "strict"]


class EntropyUnmeasurable(ValueError):
    """The generator returned no top log-probs, so step entropy cannot be measured."""


def segment_entropy(completion: Completion, vocab_size: int, k: int = 20, top_k: int = 10,
                    variant: EntropyLogprobs = "reference") -> float:
    """The step entropy of one generated segment (a turn), normalised by log |V|.

    `variant="reference"`: at a position where the sampled token is not among the top k'
    log-probs, its log-prob is an extra entry (as vLLM returns it); `"strict"`: the k' largest.
    """
    if completion.top_logprobs is None:
        raise EntropyUnmeasurable(
            "rollout.strategy=entropy measures step entropy from the top log-probs of every sampled "
            "token, and the generator returned none; use a generator that fills "
            "Completion.top_logprobs (HFGenerator, OpenAIGenerator) or choose another strategy")
    positions = []
    for i, top in enumerate(completion.top_logprobs[:k]):
        top = sorted(top, reverse=True)[:top_k]
        if variant == "reference" and i < len(completion.logprobs) and len(top) == top_k \
                and completion.logprobs[i] < top[-1]:
            top = [*top, completion.logprobs[i]]  # the sampled token, outside the top k'
        positions.append(top)
    return arpo_step_entropy(positions, vocab_size, k=k, top_k=None)


class EntropyStrategy:
    """ARPO: `initial` rollouts per task, grown to `n` by entropy-triggered branches."""

    keep_node_forks = False  # branches continue live episodes: the engine forks the live env

    def __init__(self, initial: int = 8, n: int = 16, beam: int = 2, *, vocab_size: int,
                 p0: float = 0.5, beta: float = 0.2, entropy_tokens: int = 20, entropy_top_k: int = 10,
                 entropy_logprobs: EntropyLogprobs = "reference", max_refills: int | None = None) -> None:
        if initial < 1 or initial > n:
            raise ValueError(f"entropy strategy: initial={initial} rollouts per task must be between 1 "
                             f"and n={n}; set initial at most n (the reference uses initial 8, n 16)")
        if beam < 2:
            raise ValueError(f"entropy strategy: beam={beam} allows no branch (a source makes at most "
                             "beam - 1 per round); set beam to 2 or more (the reference uses 2)")
        if not 0.0 <= p0 <= 1.0:
            raise ValueError(f"entropy strategy: p0={p0} is a probability; set it in [0, 1]")
        if entropy_tokens < 1 or entropy_top_k < 1:
            raise ValueError("entropy strategy: entropy_tokens and entropy_top_k must be at least 1, "
                             f"got {entropy_tokens} and {entropy_top_k}")
        if entropy_logprobs not in ("reference", "strict"):
            raise ValueError(f"entropy strategy: entropy_logprobs must be 'reference' or 'strict', "
                             f"got {entropy_logprobs!r}")
        if vocab_size < 2:
            raise ValueError(f"entropy strategy: vocab_size must be at least 2, got {vocab_size}")
        self.initial, self.n, self.beam = initial, n, beam
        self.p0, self.beta = p0, beta
        self.entropy_tokens, self.entropy_top_k = entropy_tokens, entropy_top_k
        self.entropy_logprobs: EntropyLogprobs = entropy_logprobs
        self.vocab_size = vocab_size
        #: fresh rollouts per group that replace ones the infrastructure ended (not branches)
        self.max_refills = n if max_refills is None else max_refills
        self._baseline: dict[tuple[int, int], float] = {}
        self._entropy: dict[tuple[int, int], float] = {}
        self._refills: dict[int, int] = {}
        # Diagnostics of the last run: (entropy, rise over the baseline) of every segment, and
        # the branch probability at every source point.
        self._measured: list[tuple[float, float]] = []
        self._probabilities: list[float] = []

    @property
    def group_size(self) -> int:
        """Trajectories per task."""
        return self.n

    def sampling_params(self, base: SamplingParams) -> SamplingParams:
        """Ask the generator for the top-k' log-probs of every sampled position."""
        return replace(base, top_logprobs=max(base.top_logprobs, self.entropy_top_k))

    def start(self, num_tasks: int, rollout: RolloutContext) -> list[EpisodeRequest]:
        self._baseline, self._entropy, self._refills = {}, {}, {}
        self._measured, self._probabilities = [], []
        return [rollout.spawn(task) for task in range(num_tasks) for _ in range(self.initial)]

    def refill(self, failed: Sequence[Episode], rollout: RolloutContext) -> list[EpisodeRequest]:
        """A rollout or branch the infrastructure ended is dropped (counted, never trained on).
        A group left with nothing running and fewer than n healthy rollouts gets one fresh one."""
        requests = []
        for group_id in sorted({e.group_id for e in failed}):
            if self._refills.get(group_id, 0) < self.max_refills:
                fresh = self._top_up(group_id, rollout)
                if fresh is not None:
                    self._refills[group_id] = self._refills.get(group_id, 0) + 1
                    requests.append(fresh)
        return requests

    def after_round(self, taken: Sequence[tuple[Episode, Completion]],
                    rollout: RolloutContext) -> list[EpisodeRequest]:
        for episode, completion in taken:
            key = (episode.group_id, episode.traj_id)
            self._entropy[key] = segment_entropy(completion, self.vocab_size, self.entropy_tokens,
                                                 self.entropy_top_k, self.entropy_logprobs)
            self._baseline.setdefault(key, self._entropy[key])
            self._measured.append((self._entropy[key], self._entropy[key] - self._baseline[key]))
        requests = []
        for group_id in sorted({episode.group_id for episode, _ in taken}):
            sources = sorted((e for e, _ in taken if e.group_id == group_id and _called_a_tool(e)),
                             key=lambda e: e.traj_id)
            count = self._healthy(group_id, rollout)
            for source in sources:
                key = (group_id, source.traj_id)
                p = self.branch_probability(key)
                self._probabilities.append(p)
                coins = rollout.rng(group_id, source.traj_id, source.turns)
                for _ in range(self.beam - 1):
                    if count >= self.n:
                        break
                    if coins.random() < p:
                        requests.append(rollout.branch(source, at_turn=source.turns))
                        count += 1
            fresh = self._top_up(group_id, rollout)  # nothing left running: a fresh rollout
            requests += [fresh] if fresh is not None else []
        return requests

    def branch_probability(self, key: tuple[int, int]) -> float:
        """P(branch) of rollout `key` = (group, trajectory) after its latest segment."""
        return arpo_branch_probability(self._entropy[key], self._baseline[key], self.p0, self.beta)

    def finish(self, episodes: Sequence[Episode]) -> list[Episode]:
        return list(episodes)

    def metrics(self) -> dict[str, float]:
        """Diagnostics of the last run: the mean step entropy of the segments generated, their
        mean rise over their rollout's baseline, and the mean branch probability at the source
        points (after tool calls) and how many there were."""
        if not self._measured:
            return {}
        return {
            "arpo/step_entropy": sum(h for h, _ in self._measured) / len(self._measured),
            "arpo/entropy_rise": sum(rise for _, rise in self._measured) / len(self._measured),
            "arpo/branch_probability": (sum(self._probabilities) / len(self._probabilities)
                                        if self._probabilities else 0.0),
            "arpo/branch_points": float(len(self._probabilities)),
        }

    # --- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _healthy(group_id: int, rollout: RolloutContext) -> int:
        return sum(1 for e in rollout.episodes(group_id) if not e.infra_error)

    def _top_up(self, group_id: int, rollout: RolloutContext) -> EpisodeRequest | None:
        """One fresh rollout when every rollout of the group has finished short of n."""
        members = rollout.episodes(group_id)
        if any(not e.done for e in members) or self._healthy(group_id, rollout) >= self.n:
            return None
        return rollout.spawn(group_id)


def _called_a_tool(episode: Episode) -> bool:
    """Whether the episode's last round ended at a tool call and it goes on (a branch point)."""
    return not episode.done and bool(episode.steps and episode.steps[-1].info.get("tool_calls"))

