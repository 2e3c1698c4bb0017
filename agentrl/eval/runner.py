"""Evaluation runs: held-out tasks through the same rollout engine as training."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from agentrl.eval.metrics import self_correction_metrics
from agentrl.rollout import ChainStrategy, RolloutEngine
from agentrl.types import SamplingParams, Trajectory


def evaluate(
    generator: Any,
    tokenizer: Any,
    make_env: Callable[[], Any],
    seeds: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_turns: int | None = None,
    max_total_tokens: int = 2048,
    ks: Sequence[int] = (1, 5),
    sampling_seed: int = 0,
    env_workers: int = 8,
) -> tuple[dict[str, Any], list[Trajectory]]:
    """One episode per seed; returns (metrics, trajectories).

    An episode the infrastructure ended (a crashed env, a tool or sandbox failure) is replaced
    once by a fresh one of the same task; the metrics cover the episodes that ran to their
    end, and `infra_errors` counts the others (they stay in the returned trajectories).
    """
    sampling = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                              seed=sampling_seed)
    with RolloutEngine(generator, tokenizer, sampling, max_turns=max_turns,
                       max_total_tokens=max_total_tokens, env_workers=env_workers) as engine:
        groups = engine.run(make_env, [{"seed": int(s)} for s in seeds], ChainStrategy(1))
    trajectories = [t for g in groups for t in g.trajectories]
    scored = [t for t in trajectories if not t.infra_error]
    if not scored:
        reasons = sorted({t.infra_error for t in trajectories})[:3]
        raise RuntimeError(f"Every evaluation episode failed for infrastructure reasons, e.g. {reasons}; "
                           "check that the env's tools and sandboxes work (agentrl sandbox doctor).")
    metrics = self_correction_metrics(scored, ks)
    metrics["infra_errors"] = len(trajectories) - len(scored)
    return metrics, trajectories
