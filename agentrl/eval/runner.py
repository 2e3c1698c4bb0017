"""Evaluation runs: held-out tasks through the same rollout engine as training.

The generator is whatever the recipe's `generation` section built (`make_generator`): the
trainer's module in this process, a vLLM engine, or an OpenAI-compatible server. The engine
drives it through the `Generator` protocol only, so every backend is evaluated by the same
code, with the same seeds.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from agentrl.config import Config
from agentrl.eval.metrics import self_correction_metrics
from agentrl.eval.pass_at_k import mean_pass_at_k
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
    samples: int = 1,
    pass_k: Sequence[int] = (1,),
    sampling_seed: int = 0,
    env_workers: int = 8,
) -> tuple[dict[str, Any], list[Trajectory]]:
    """`samples` episodes per task seed; returns (metrics, trajectories).

    A sample is a whole multi-turn episode, correct when it ends solved (`success`). The
    samples of one task are a chain group, so each draws its own noise (the engine seeds every
    trajectory and turn apart). Metrics: the self-correction metrics over every scored episode
    (`ks` are the turn budgets of Succ@k), and `pass@k` for each k in `pass_k` (each at most
    `samples`), averaged over tasks.

    An episode the infrastructure ended (a crashed env, a tool or sandbox failure) is replaced
    by a fresh one of the same task (at most `samples` times per task); the metrics cover the
    episodes that ran to their end, and `infra_errors` counts the others (they stay in the
    returned trajectories). A task left with fewer than `samples` scored episodes counts with
    the n it has, and is left out of pass@k for k > n (`pass@k_tasks` then says how many tasks
    pass@k covers; `tasks_short` how many tasks fell short).
    """
    too_many = [k for k in pass_k if not 1 <= k <= samples]
    if too_many:
        raise ValueError(f"pass@{too_many[0]} needs at least {too_many[0]} samples per task; "
                         f"got samples={samples}")
    sampling = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                              seed=sampling_seed)
    with RolloutEngine(generator, tokenizer, sampling, max_turns=max_turns,
                       max_total_tokens=max_total_tokens, env_workers=env_workers) as engine:
        groups = engine.run(make_env, [{"seed": int(s)} for s in seeds], ChainStrategy(samples))
    trajectories = [t for g in groups for t in g.trajectories]
    scored = [t for t in trajectories if not t.infra_error]
    if not scored:
        reasons = sorted({t.infra_error for t in trajectories})[:3]
        raise RuntimeError(f"Every evaluation episode failed for infrastructure reasons, e.g. {reasons}; "
                           "check that the env's tools and sandboxes work (agentrl sandbox doctor).")
    metrics: dict[str, Any] = {"tasks": len(groups), "samples": samples}
    outcomes = [[t.success for t in g.trajectories if not t.infra_error] for g in groups]
    for k in sorted(set(pass_k)):
        metrics[f"pass@{k}"], counted = mean_pass_at_k(outcomes, k)
        if counted < len(groups):
            metrics[f"pass@{k}_tasks"] = counted
    metrics.update(self_correction_metrics(scored, ks))
    metrics["infra_errors"] = len(trajectories) - len(scored)
    metrics["tasks_short"] = sum(len(o) < samples for o in outcomes)
    return metrics, trajectories


def evaluate_recipe(config: Config, generator: Any, tokenizer: Any,
                    make_env: Callable[[], Any]) -> tuple[dict[str, Any], list[Trajectory]]:
    """`evaluate` with the recipe's settings: `eval.tasks` held-out task seeds from
    `eval.seed_offset`, `eval.samples` episodes each, pass@k for `eval.pass_k`, Succ@1 and
    Succ@`eval.k`, the rollout section's limits. Adds `seconds` (wall time) to the metrics."""
    ecfg, rollout = config.eval, config.rollout
    started = time.perf_counter()
    metrics, trajectories = evaluate(
        generator, tokenizer, make_env, range(ecfg.seed_offset, ecfg.seed_offset + ecfg.tasks),
        max_new_tokens=rollout.max_new_tokens, temperature=ecfg.temperature, top_p=rollout.top_p,
        max_turns=rollout.max_turns, max_total_tokens=rollout.max_total_tokens, ks=(1, ecfg.k),
        samples=ecfg.samples, pass_k=ecfg.pass_k, sampling_seed=config.run.seed + 17,
        env_workers=rollout.env_workers,
    )
    metrics["seconds"] = time.perf_counter() - started
    return metrics, trajectories
