"""What envs in Ray env workers cost per rollout step, against the same envs in the trainer's process.

Each workload runs `RolloutEngine.run` on the same tasks and seeds twice per round: with local
envs (`env_factory(config)`), and with the envs in `ray.workers` env worker actors of a local
Ray instance (`EnvWorkerGroup.factory`, as `ray.enabled: true` builds them). The trajectories are
the same token for token (tests/scale/test_ray.py); only where the envs run differs. Workloads:

- `arithmetic, sampled`: the demo recipe's rollout step (`Config()`: 16 tasks x 8 rollouts of
  `agentrl/ArithmeticTryAgain-v0`, chains, the tiny model after a short SFT warm-up sampling);
- `arithmetic, scripted`: the same envs and tasks, every turn answering "0" without a model
  (mostly wrong: episodes run to the turn limit), so the seconds are the env path alone;
- `Code-v0, scripted, sandboxes`: 4 tasks x 4 rollouts of `agentrl/Code-v0`, each a python call
  run in a sandbox and a wrong answer graded in a sandbox; the local arm draws from one pool of
  `--pool` bwrap sandboxes, the remote arm from a pool of `--pool / workers` in each worker.
  Every running episode holds a sandbox until the rollout ends (and grading takes one more), so
  a pool must hold more than the episodes it serves (docs/sandboxes.md): 16 episodes, 24
  sandboxes, 8 episodes and 12 sandboxes per worker.

Envs are made, reset, stepped and closed inside the timed call, as in training. The arms run
interleaved (local, ray, local, ray, ...) after one warm-up call each, so load from other
processes hits them alike; the table shows medians and the difference per env step (steps
counted from the trajectories; each episode also makes, resets and closes one env).

    python benchmarks/ray_overhead.py [--repeats 5] [--workers 2] [--pool 24] [--no-code]
        [--out runs/bench/ray_overhead.json]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from _common import machine, write_result
from rich.console import Console
from rl_update_overhead import build_policy

from agentrl.config import Config
from agentrl.envs import make_env
from agentrl.generation import HFGenerator
from agentrl.rollout import ChainStrategy, RolloutEngine
from agentrl.training.run import env_factory
from agentrl.types import Completion, SamplingParams


def scripted(tokenizer: Any, turns: list[str]) -> Callable:
    """A policy that plays `turns[k]` at turn k (the last one from then on), without a model and
    without asking the env anything (no extra calls to a remote env)."""
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in turns]

    def act(episodes, params):
        out = []
        for episode in episodes:
            k = min(episode.turns, len(turns) - 1)
            out.append(Completion(list(encoded[k]), [0.0] * len(encoded[k]), "stop", turns[k]))
        return out

    return act


def run_benchmark(*, repeats: int, workers: int, pool: int, code: bool, sft_demos: int,
                  console: Console) -> dict[str, Any]:
    import ray

    from agentrl.envs.remote import EnvWorkerGroup, SandboxSettings
    from agentrl.sandboxes import SandboxPool
    from agentrl.sandboxes.backends import bwrap_ready

    torch.set_num_threads(1)
    config = Config()
    rcfg = config.rollout
    torch.manual_seed(config.run.seed)
    random.seed(config.run.seed)
    if code and not bwrap_ready()[0]:
        console.print(f"Code-v0 workload skipped: {bwrap_ready()[1]}")
        code = False
    # Logical CPUs (a count Ray schedules by): both groups of workers must be placed at once.
    ray.init(num_cpus=max(os.cpu_count() or 1, 2 * workers), include_dashboard=False,
             object_store_memory=config.ray.object_store_mb * 2**20, logging_level="WARNING")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model, tokenizer = build_policy(config, Path(tmp), sft_demos=sft_demos, sft_epochs=1, console=console)
        generator = HFGenerator(model, tokenizer, max_batch_size=rcfg.max_batch_size)
        sampling = SamplingParams(temperature=rcfg.temperature, top_p=rcfg.top_p,
                                  max_new_tokens=rcfg.max_new_tokens, seed=config.run.seed)
        engine = RolloutEngine(generator, tokenizer, sampling, max_turns=rcfg.max_turns,
                               max_total_tokens=rcfg.max_total_tokens, env_workers=rcfg.env_workers)
        arith_tasks = [{"seed": config.env.train_seed_offset + i} for i in range(rcfg.tasks_per_iteration)]
        code_tasks = [{"seed": i} for i in range(4)]
        code_kwargs = {"max_turns": 3, "code_timeout": 20.0, "call_timeout": 60.0}
        answer_zero = scripted(tokenizer, ["<answer>0</answer>"])
        code_turns = scripted(tokenizer, ["<python>print(sum(range(10)))</python>",
                                          "<answer>def f(x):\n    return x</answer>"])
        with contextlib.ExitStack() as stack:
            group = stack.enter_context(EnvWorkerGroup(workers))
            remote_arith = group.factory(config.env.id, dict(config.env.kwargs))
            # (workload, arm) -> (make_env, tasks, strategy size, policy)
            calls: dict[tuple[str, str], tuple] = {
                ("arithmetic, sampled", "local"): (env_factory(config), arith_tasks, rcfg.group_size, None),
                ("arithmetic, sampled", "ray"): (remote_arith, arith_tasks, rcfg.group_size, None),
                ("arithmetic, scripted", "local"): (env_factory(config), arith_tasks, rcfg.group_size, answer_zero),
                ("arithmetic, scripted", "ray"): (remote_arith, arith_tasks, rcfg.group_size, answer_zero),
            }
            if code:
                local_pool = stack.enter_context(SandboxPool(pool, "bwrap"))
                code_group = stack.enter_context(
                    EnvWorkerGroup(workers, sandbox=SandboxSettings(max(1, pool // workers), "bwrap")))
                calls[("Code-v0, scripted, sandboxes", "local")] = (
                    lambda: make_env("agentrl/Code-v0", pool=local_pool, **code_kwargs), code_tasks, 4, code_turns)
                calls[("Code-v0, scripted, sandboxes", "ray")] = (
                    code_group.factory("agentrl/Code-v0", code_kwargs), code_tasks, 4, code_turns)

            def run(key: tuple[str, str]) -> tuple[float, list]:
                make, tasks, size, policy = calls[key]
                started = time.perf_counter()
                groups = engine.run(make, tasks, ChainStrategy(size), policy=policy)
                return time.perf_counter() - started, groups

            shapes: dict[tuple[str, str], dict[str, Any]] = {}
            with console.status("Warm-up: one call per arm"):
                for key in calls:
                    _, groups = run(key)
                    trajectories = [t for g in groups for t in g.trajectories]
                    shapes[key] = {"episodes": len(trajectories),
                                   "env_steps": sum(len(t.steps) for t in trajectories),
                                   "infra_errors": sum(1 for t in trajectories if t.infra_error),
                                   "tokens": sum(len(t.token_ids) for t in trajectories),
                                   "rewards": [t.reward for t in trajectories]}
            times: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
            load_before = os.getloadavg()
            with console.status(f"Timing {repeats} interleaved calls per arm"):
                for _ in range(repeats):
                    for key in calls:
                        times[key].append(run(key)[0])
            load_after = os.getloadavg()
        engine.close()
    finally:
        ray.shutdown()

    workloads: dict[str, Any] = {}
    for workload in dict.fromkeys(w for w, _ in calls):
        local, remote = shapes[(workload, "local")], shapes[(workload, "ray")]
        # The same tasks and seeds give the same episodes: the comparison is like for like.
        same = (local["env_steps"] == remote["env_steps"] and local["tokens"] == remote["tokens"]
                and local["rewards"] == remote["rewards"])
        local_s = statistics.median(times[(workload, "local")])
        ray_s = statistics.median(times[(workload, "ray")])
        workloads[workload] = {
            "episodes": local["episodes"], "env_steps": local["env_steps"], "tokens": local["tokens"],
            "infra_errors": {"local": local["infra_errors"], "ray": remote["infra_errors"]},
            "same_episodes_local_and_ray": same,
            "seconds": {"local": times[(workload, "local")], "ray": times[(workload, "ray")]},
            "local_s_median": local_s, "ray_s_median": ray_s,
            "ray_minus_local_s": ray_s - local_s,
            "ray_minus_local_ms_per_env_step": 1000 * (ray_s - local_s) / local["env_steps"],
            "ray_vs_local": ray_s / local_s,
        }
    return {"benchmark": "ray_overhead", "recipe": "Config() defaults (demo) for arithmetic",
            "ray": {"version": ray.__version__, "workers": workers, "num_cpus_per_worker": 1.0,
                    "local_instance": True},
            "sandbox": {"backend": "bwrap", "local_pool": pool, "pool_per_worker": max(1, pool // workers)}
            if code else None,
            "repeats": repeats, "sft_demos": sft_demos, "cores": os.cpu_count(), "machine": machine(),
            "load_average_1_5_15": {"before": list(load_before), "after": list(load_after)},
            "workloads": workloads}


def results_table(result: dict[str, Any]) -> str:
    lines = ["| workload | episodes | env steps | local envs (median) | Ray env workers (median) | Ray - local "
             "| per env step | same episodes |",
             "|---|---:|---:|---:|---:|---:|---:|:---:|"]
    for name, w in result["workloads"].items():
        lines.append(f"| {name} | {w['episodes']} | {w['env_steps']} | {w['local_s_median']:.3f} s "
                     f"| {w['ray_s_median']:.3f} s | {w['ray_minus_local_s']:+.3f} s "
                     f"| {w['ray_minus_local_ms_per_env_step']:+.2f} ms | "
                     f"{'yes' if w['same_episodes_local_and_ray'] else 'NO'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per arm")
    parser.add_argument("--workers", type=int, default=2, help="env worker actors (ray.workers)")
    parser.add_argument("--pool", type=int, default=24, help="bwrap sandboxes in all (Code-v0 workload)")
    parser.add_argument("--no-code", dest="code", action="store_false", help="skip the Code-v0 workload")
    parser.add_argument("--sft-demos", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/ray_overhead.json"))
    args = parser.parse_args()
    result = run_benchmark(repeats=args.repeats, workers=args.workers, pool=args.pool, code=args.code,
                           sft_demos=args.sft_demos, console=Console())
    write_result(result, results_table(result), args.out)


if __name__ == "__main__":
    main()
