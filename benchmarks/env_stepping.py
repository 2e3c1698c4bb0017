"""How long the envs of a rollout round take to step: the search demo's episodes, oracle actions.

A rollout round sends every active episode's action to its env at once. The rollout engine
steps ToolEnvs together on the tools' event loop (`RolloutEngine._step_all`: one hand-off per
round); any other env is stepped in the engine's thread pool, where each `ToolEnv.step` hands
its coroutine to the event loop and waits (one hand-off per env). This benchmark plays whole
episodes of N SearchQA envs (the demo's settings: a new world per episode, top-1 search, up to 4
turns) with their oracle's actions both ways, alternating, and reports the median time of all
rounds of a batch. It also times one BM25 query on an episode's 21-passage index with bm25s's
`n_threads=0` (a plain loop, what agentrl uses) against `n_threads=1` (bm25s then opens a
thread pool for every call).

    python benchmarks/env_stepping.py [--envs 100] [--repeats 7]

Writes a JSON result and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from _common import machine, write_result


def _play(make_env, seeds: list[int], step_round) -> tuple[float, int]:
    """Play every env's oracle episode; the seconds spent in step rounds and the steps taken."""
    envs = [make_env() for _ in seeds]
    for env, seed in zip(envs, seeds):
        env.reset(seed=seed)
    seconds, steps, active = 0.0, 0, envs
    while active:
        actions = [env.oracle_action() for env in active]
        began = time.perf_counter()
        results = step_round(active, actions)
        seconds += time.perf_counter() - began
        steps += len(active)
        active = [env for env, result in zip(active, results) if not (result[2] or result[3])]
    return seconds, steps


def run_benchmark(envs: int, repeats: int) -> dict:
    from agentrl.config import load_config
    from agentrl.envs.tasks.search_qa import EPISODE_WORLD, world_index
    from agentrl.rollout import RolloutEngine
    from agentrl.rollout.engine import _safe_step
    from agentrl.tools.bm25 import _tokenize
    from agentrl.training.demos import demo_overrides
    from agentrl.training.run import env_factory

    make_env = env_factory(load_config(None, demo_overrides("search")))
    engine = RolloutEngine(None, None, None, env_workers=8)
    ways = {
        "thread pool (one hand-off per env)": lambda active, actions: list(engine._pool.map(_safe_step, active, actions)),
        "event loop (one hand-off per round)": engine._step_all,
    }
    samples: dict[str, list[float]] = {name: [] for name in ways}
    steps: dict[str, int] = {}
    for repeat in range(repeats):
        # The demo's groups: 5 rollouts of each task share its seed (and world).
        seeds = [10_000 * repeat + i // 5 for i in range(envs)]
        for name, step_round in ways.items():
            seconds, steps[name] = _play(make_env, seeds, step_round)
            samples[name].append(seconds)
    engine.close()

    index = world_index(EPISODE_WORLD)
    tokens = _tokenize(["Kunufu"])
    query_ms = {}
    for threads in (0, 1):
        began = time.perf_counter()
        for _ in range(300):
            index._model.retrieve(tokens, k=1, show_progress=False, n_threads=threads)
        query_ms[f"n_threads={threads}"] = (time.perf_counter() - began) / 300 * 1000
    return {
        "machine": machine(), "envs": envs, "repeats": repeats,
        "rounds": {name: {"median_ms": 1000 * statistics.median(s), "steps": steps[name],
                          "per_step_ms": 1000 * statistics.median(s) / steps[name], "samples_s": s}
                   for name, s in samples.items()},
        "bm25_query_ms": query_ms,
    }


def table(result: dict) -> str:
    lines = [f"| stepping {result['envs']} SearchQA episodes | all rounds, median (ms) | per step (ms) |",
             "|---|---:|---:|"]
    for name, row in result["rounds"].items():
        lines.append(f"| {name} | {row['median_ms']:.0f} | {row['per_step_ms']:.2f} |")
    lines += ["", "| one BM25 query, 21 passages | ms |", "|---|---:|"]
    lines += [f"| bm25s `{name}` | {ms:.2f} |" for name, ms in result["bm25_query_ms"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/env_stepping.json"))
    args = parser.parse_args()
    result = run_benchmark(args.envs, args.repeats)
    write_result(result, table(result), args.out)


if __name__ == "__main__":
    main()
