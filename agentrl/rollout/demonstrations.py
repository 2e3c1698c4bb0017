"""Demonstrations from an env's oracle policy, built through the rollout engine itself.

SFT data goes through exactly the token-space path of RL rollouts (same prompt rendering, same
template deltas, same loss masks), so a warm-up model is trained on the format it will meet.

With `mistake_rate > 0`, some demonstrations first make a plausible mistake
(`env.mistaken_action()`), get the env's feedback, and then recover with the oracle's action.
The mistaken turns stay in the context but get loss mask 0: the model learns to answer after
feedback without learning to make mistakes.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Literal, Sequence

from agentrl.rollout.engine import RolloutEngine
from agentrl.rollout.episode import Episode
from agentrl.rollout.strategies import ChainStrategy
from agentrl.types import Completion, SamplingParams, Trajectory

Policy = Callable[[list[Episode], SamplingParams], list[Completion]]
#: Demonstrations written at a time for envs that run code (each holds a sandbox).
DEMO_CHUNK = 256
MistakeAt = Literal["start", "any"]


def oracle_policy(tokenizer: Any, *, mistake_rate: float = 0.0, mistake_at: MistakeAt = "start",
                  seed: int = 0, mistakes: dict[tuple[int, int], set[int]] | None = None) -> Policy:
    """A policy that plays `env.oracle_action()`, ending each turn as sampling would.

    An action that ends with one of the env's stop strings ends there (as generation stops at
    it); any other action ends with the EOS token, which the model must learn to emit.
    With probability `mistake_rate` per turn (never on the last allowed turn) it plays
    `env.mistaken_action()` instead and records the turn in `mistakes[(group_id, traj_id)]`:
    with `mistake_at="start"` only while the episode has made nothing but mistakes (wrong
    answers, then the right one: "try again" tasks), with `mistake_at="any"` at most once per
    episode, at any turn where the env can make one (a failed search in the middle of a plan).
    """
    rng = random.Random(seed)

    def act(episodes: list[Episode], params: SamplingParams) -> list[Completion]:
        completions = []
        for episode in episodes:
            key = (episode.group_id, episode.traj_id)
            made = mistakes.setdefault(key, set()) if mistakes is not None else set()
            last_turn = episode.turns + 1 >= getattr(episode.env, "max_turns", 1)
            text = None
            may_err = len(made) == episode.turns if mistake_at == "start" else not made
            if mistake_rate > 0 and not last_turn and may_err and rng.random() < mistake_rate:
                try:
                    text = episode.env.mistaken_action()
                    made.add(episode.turns)
                except NotImplementedError:
                    text = None
            if text is None:
                text = episode.env.oracle_action()
            completions.append(_as_completion(tokenizer, text, episode.env.stop_strings))
        return completions

    return act


def _as_completion(tokenizer: Any, text: str, stop_strings: Sequence[str]) -> Completion:
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if any(text.endswith(stop) for stop in stop_strings):
        return Completion(token_ids=ids, logprobs=[0.0] * len(ids), finish_reason="stop", text=text)
    ids.append(tokenizer.eos_token_id)
    return Completion(token_ids=ids, logprobs=[0.0] * len(ids), finish_reason="eos",
                      text=text + tokenizer.eos_token)


def collect_demonstrations(
    make_env: Callable[[], Any], seeds: Sequence[int], tokenizer: Any, *,
    max_total_tokens: int = 4096, env_workers: int = 4, mistake_rate: float = 0.0,
    mistake_at: MistakeAt = "start", seed: int = 0, chunk: int | None = None,
) -> list[Trajectory]:
    """One oracle episode per seed, as trajectories (loss mask 1 on the oracle's own actions).

    With `chunk`, episodes run that many at a time (e.g. `DEMO_CHUNK`): an env that runs code
    holds a sandbox until its episode ends, so thousands of demonstrations at once would start
    thousands of sandboxes. Each chunk draws its mistakes from `seed` + its first index.
    """
    seeds = [int(s) for s in seeds]
    chunk = len(seeds) or 1 if chunk is None else chunk
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    trajectories: list[Trajectory] = []
    engine = RolloutEngine(None, tokenizer, SamplingParams(), max_total_tokens=max_total_tokens,
                           env_workers=env_workers)
    with engine:
        for first in range(0, len(seeds), chunk):
            mistakes: dict[tuple[int, int], set[int]] = {}
            policy = oracle_policy(tokenizer, mistake_rate=mistake_rate, mistake_at=mistake_at,
                                   seed=seed + first, mistakes=mistakes)
            groups = engine.run(make_env, [{"seed": s} for s in seeds[first:first + chunk]],
                                ChainStrategy(1), policy=policy)
            for trajectory in (t for g in groups for t in g.trajectories):
                for turn in mistakes.get((trajectory.group_id, trajectory.traj_id), ()):
                    start, end = trajectory.steps[turn].action_span
                    trajectory.loss_mask[start:end] = [0] * (end - start)
                trajectories.append(trajectory)
    return trajectories
