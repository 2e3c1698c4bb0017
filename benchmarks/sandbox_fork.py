"""Sandbox fork benchmark: copying the interpreter state (the default) against replaying the
parent's calls, per backend, into warm pool sandboxes and into freshly started ones; the size
of the copied state; and os.fork() inside the parent's sandbox (the rejected option, which
shares the parent's files, processes and limits with the branch).

    python benchmarks/sandbox_fork.py [--backends docker,bwrap] [--forks 30] [--out runs/bench/sandbox_fork.json]

Writes a JSON result and prints a table (docs/sandboxes.md, "Forks", keeps the latest one).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

from agentrl.sandboxes import Sandbox, SandboxPool, create
from agentrl.sandboxes.backends import bwrap_ready, docker_ready

from _common import write_result
from sandbox_latency import IN_SANDBOX_FORK, aligned_table, fmt, machine, percentiles

# Small: what an agent's first turns leave behind (a few numbers, a dict, a function).
SMALL_STATE = [
    "import random, math\nx = random.random()",
    "data = {'a': [1, 2, 3], 'b': 'text'}",
    "def f(v):\n    return math.sqrt(v) + x",
    "class Box:\n    def __init__(self, v):\n        self.v = v\nbox = Box(3)",
    "open('notes.txt', 'w').write('some notes')",
]
# Medium: a 100k-element list, 20 files of 10 kB, a set of 2000 strings, 20 functions.
MEDIUM_STATE = SMALL_STATE + [
    "values = [i * 0.5 for i in range(100_000)]",
    "import os\nos.makedirs('out', exist_ok=True)\n"
    "for i in range(20):\n    open(f'out/{i}.txt', 'w').write('x' * 10_000)",
    "seen = {f'word{i}' for i in range(2000)}",
    "fns = [eval(f'lambda v: v + {i}') for i in range(20)]",
]
STATES = {"small": SMALL_STATE, "medium": MEDIUM_STATE}


def build(sandbox: Sandbox, cells: list[str]) -> None:
    for cell in cells:
        result = sandbox.run(cell)
        if not result.ok:
            raise RuntimeError(f"benchmark cell failed: {result.stderr}")


def replay_fork(parent: Sandbox) -> Sandbox:
    """The fallback path on its own: a sandbox from the same source, the calls replayed."""
    child = parent._fork_target()
    child._replay(list(parent._history))
    return child


def snapshots(parent: Sandbox, n: int) -> tuple[list[float], int]:
    """Seconds each of `n` snapshots of `parent` took (request to answer), and their size."""
    samples = []
    for _ in range(n):
        with parent._lock:
            began = time.perf_counter()
            blob, why = parent._snapshot()
            samples.append(time.perf_counter() - began)
        if blob is None:
            raise RuntimeError(f"the benchmark state could not be copied: {why}")
    return samples, len(blob)


def timed_forks(pool: SandboxPool, parent: Sandbox, fork: Callable[[Sandbox], Sandbox], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        # Let the pool refill (a start competes for the CPU) so the fork finds a warm sandbox.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stats = pool.stats()
            if stats["sandbox/pool_idle"] >= 1 and stats["sandbox/pool_starting"] == 0:
                break
            time.sleep(0.01)
        began = time.perf_counter()
        child = fork(parent)
        samples.append(time.perf_counter() - began)
        if fork is Sandbox.fork and not child.fork_exact:
            raise RuntimeError(f"the benchmark fork was not exact: {child.fork_note}")
        pool.release(child)
    return samples


def bench_backend(backend: str, forks: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with SandboxPool(size=3, backend=backend) as pool:
        for name, cells in STATES.items():
            with pool.sandbox() as parent:
                build(parent, cells)
                samples, size = snapshots(parent, forks)
                out[f"snapshot_{name}"] = percentiles(samples)
                out[f"{name}_snapshot_bytes"] = size
                out[f"copy_pool_{name}"] = percentiles(timed_forks(pool, parent, Sandbox.fork, forks))
                out[f"replay_pool_{name}"] = percentiles(timed_forks(pool, parent, replay_fork, forks))
    with create(backend) as parent:
        build(parent, SMALL_STATE)
        samples = []
        for _ in range(max(3, forks // 6)):
            began = time.perf_counter()
            child = parent.fork()
            samples.append(time.perf_counter() - began)
            child.close()
        out["copy_fresh_small"] = percentiles(samples)
        out["in_boundary_fork_ms"] = float(parent.run(IN_SANDBOX_FORK).stdout)
    return out


def table(results: dict[str, Any]) -> str:
    backends = results["backends"]
    rows: list[tuple[str, ...]] = [("measure", *backends.keys())]

    def add(label: str, key: str, field: str | None = "p50_ms") -> None:
        values = [b.get(key) if field is None else b.get(key, {}).get(field) for b in backends.values()]
        rows.append((label, *[fmt(v) for v in values]))

    add("copy into a warm pool sandbox, small state, p50 ms", "copy_pool_small")
    add("copy into a warm pool sandbox, small state, p99 ms", "copy_pool_small", "p99_ms")
    add("replay into a warm pool sandbox, small state, p50 ms", "replay_pool_small")
    add("copy into a warm pool sandbox, medium state, p50 ms", "copy_pool_medium")
    add("copy into a warm pool sandbox, medium state, p99 ms", "copy_pool_medium", "p99_ms")
    add("replay into a warm pool sandbox, medium state, p50 ms", "replay_pool_medium")
    add("copy into a fresh sandbox (no pool), small state, p50 ms", "copy_fresh_small")
    add("snapshot alone (parent's side), small state, p50 ms", "snapshot_small")
    add("snapshot alone (parent's side), medium state, p50 ms", "snapshot_medium")
    add("snapshot size, small state, bytes", "small_snapshot_bytes", None)
    add("snapshot size, medium state, bytes", "medium_snapshot_bytes", None)
    add("os.fork inside the parent's sandbox (rejected), ms", "in_boundary_fork_ms", None)
    return aligned_table(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="docker,bwrap")
    parser.add_argument("--forks", type=int, default=30, help="timed forks per measure")
    parser.add_argument("--out", default="runs/bench/sandbox_fork.json")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine(), "command": " ".join(sys.argv), "backends": {}}
    ready = {"docker": docker_ready, "bwrap": bwrap_ready}
    for backend in args.backends.split(","):
        ok, why = ready[backend]()
        if not ok:
            print(f"skipping {backend}: {why}", file=sys.stderr)
            continue
        print(f"benchmarking {backend} ...", file=sys.stderr)
        results["backends"][backend] = bench_backend(backend, args.forks)
    print(f"machine: {results['machine']}")
    write_result(results, table(results), Path(args.out))


if __name__ == "__main__":
    main()
