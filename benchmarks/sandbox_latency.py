"""Sandbox latency benchmark: warm calls, state-carrying calls, fork, pool throughput, per backend,
side by side with a fresh ``docker run`` per call and a fresh subprocess per call; and forks under
branching load (many live episodes forked at once, as ARPO and Tree-GRPO do after a tool call).

    python benchmarks/sandbox_latency.py [--backends docker,bwrap] [--parts calls,branching]
        [--calls 200] [--rounds 20] [--concurrent 16] [--out runs/bench/sandbox_latency.json]

Writes a JSON result and prints a table (docs/sandboxes.md keeps the latest one; the branching
part is in its "Forks" section).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from agentrl.sandboxes import SandboxPool, create
from agentrl.sandboxes.backends import bwrap_ready, docker_ready
from agentrl.sandboxes.bwrap_backend import find_python

COMPUTE_10MS = "t = __import__('time').perf_counter()\nwhile __import__('time').perf_counter() - t < 0.01:\n    pass"
IN_SANDBOX_FORK = (
    "import os, time\n"
    "samples = []\n"
    "for _ in range(20):\n"
    "    t = time.perf_counter()\n"
    "    pid = os.fork()\n"
    "    if pid == 0:\n"
    "        os._exit(0)\n"
    "    os.waitpid(pid, 0)\n"
    "    samples.append(time.perf_counter() - t)\n"
    "samples.sort()\n"
    "print(samples[len(samples) // 2] * 1000)"
)


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return {"p50_ms": 1000 * pick(0.5), "p99_ms": 1000 * pick(0.99), "n": len(ordered)}


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        began = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - began)
    return samples


def bench_backend(backend: str, calls: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    starts = []
    for _ in range(5):
        began = time.perf_counter()
        sandbox = create(backend)
        starts.append(time.perf_counter() - began)
        sandbox.close()
    out["start"] = percentiles(starts)
    with create(backend) as sandbox:
        for _ in range(10):
            sandbox.run("print(1)")
        out["print1"] = percentiles(timed(lambda: sandbox.run("print(1)"), calls))
        out["compute_10ms"] = percentiles(timed(lambda: sandbox.run(COMPUTE_10MS), max(20, calls // 4)))
        sandbox.run("data = []")
        out["stateful"] = percentiles(
            timed(lambda: sandbox.run("data.append(len(data))\nlen(data)"), calls)
        )
        out["in_boundary_fork_ms"] = float(sandbox.run(IN_SANDBOX_FORK).stdout)

        # Fork (a copy of the interpreter state; replay only for what cannot be copied): 5 calls of history.
        with create(backend) as parent:
            for i in range(5):
                parent.run(f"v{i} = {i}")
            forks = []
            for _ in range(5):
                began = time.perf_counter()
                child = parent.fork()
                forks.append(time.perf_counter() - began)
                child.close()
            out["fork_replay_cold"] = percentiles(forks)
    with SandboxPool(size=4, backend=backend) as pool:
        with pool.sandbox() as parent:
            for i in range(5):
                parent.run(f"v{i} = {i}")
            forks = []
            for _ in range(5):
                deadline = time.monotonic() + 30  # let the pool refill so the fork finds a warm one
                while pool.stats()["sandbox/pool_idle"] < 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                began = time.perf_counter()
                child = parent.fork()
                forks.append(time.perf_counter() - began)
                pool.release(child)
            out["fork_replay_pool"] = percentiles(forks)
    out["pool"] = pool_throughput(backend)
    return out


def pool_throughput(backend: str, size: int = 4, workers: int = 8, trajectories: int = 32, calls: int = 5) -> dict[str, float]:
    """`workers` threads run `trajectories` trajectories of `calls` print(1) calls each."""
    with SandboxPool(size=size, backend=backend) as pool:
        todo = iter(range(trajectories))
        lock = threading.Lock()

        def worker() -> None:
            while True:
                with lock:
                    if next(todo, None) is None:
                        return
                with pool.sandbox() as sandbox:
                    for _ in range(calls):
                        sandbox.run("print(1)")

        began = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - began
        stats = pool.stats()
    return {
        "size": size,
        "workers": workers,
        "calls_per_s": trajectories * calls / elapsed,
        "trajectories_per_s": trajectories / elapsed,
        "call_p50_ms": stats["sandbox/latency_p50_ms"],
        "call_p99_ms": stats["sandbox/latency_p99_ms"],
        "checkout_wait_s_mean": stats["sandbox/wait_seconds"] / max(1, stats["sandbox/checkouts"]),
    }


# ---- forks under branching load ------------------------------------------------------------------

# What an agent's first tool calls leave in a live episode: a few variables, a function defined in
# a cell, a file written, random's generator advanced past the seed.
BRANCH_PARENT_STATE = [
    "import random, math\nrandom.seed(7)\nwarmup = [random.random() for _ in range(5)]\ndrawn = random.random()",
    "prices = {'apple': 1.25, 'pear': 0.8}\nbasket = ['apple', 'pear', 'apple']",
    "def total(items, tax=0.1):\n    return round(sum(prices[i] for i in items) * (1 + tax) + drawn, 6)",
    "open('notes.txt', 'w').write('total %r' % total(basket))",
]
# What a child must show to be the parent's exact copy (it changes no state).
BRANCH_CHECK = "print(repr(drawn), total(basket), open('notes.txt').read(), hash(random.getstate()))"


def branch_parent(sandbox: Any) -> str:
    """Build the parent state in `sandbox`; return what `BRANCH_CHECK` prints there."""
    for cell in BRANCH_PARENT_STATE:
        result = sandbox.run(cell)
        if not result.ok:
            raise RuntimeError(f"benchmark cell failed: {result.stderr}")
    return sandbox.run(BRANCH_CHECK).stdout


def check_branch(child: Any, expected: str) -> None:
    """Raise unless `child` is an exact fork: `fork_exact`, and the variables, the function,
    the file and random's state are the parent's."""
    if not child.fork_exact:
        raise RuntimeError(f"the benchmark fork was not exact: {child.fork_note}")
    shown = child.run(BRANCH_CHECK).stdout
    if shown != expected:
        raise RuntimeError(f"the fork shows {shown!r}, its parent {expected!r}")


def wait_for_warm(pool: SandboxPool, idle: int, timeout: float = 300) -> None:
    """Wait until `idle` sandboxes of `pool` are warm and none is starting (a start competes
    for the CPU with the forks being timed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = pool.stats()
        if stats["sandbox/pool_idle"] >= idle and stats["sandbox/pool_starting"] == 0:
            return
        time.sleep(0.02)
    raise RuntimeError(f"the pool did not refill to {idle} warm sandboxes within {timeout} s")


def concurrent_forks(
    parents: list[Any], expected: list[str], concurrent_n: int, rounds: int, before_round: Callable[[], None]
) -> dict[str, Any]:
    """`rounds` rounds of `concurrent_n` forks issued at once from a thread pool (fork i of a
    round forks parent i mod len(parents)); every child is checked to be exact, untimed, then
    closed. Returns per-fork percentiles and the wall time per round."""
    forks: list[float] = []
    walls: list[float] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrent_n) as threads:
        for _ in range(rounds):
            before_round()
            gate = threading.Barrier(concurrent_n)

            def one(i: int) -> tuple[Any, float, float]:
                gate.wait()
                began = time.perf_counter()
                child = parents[i % len(parents)].fork()
                ended = time.perf_counter()
                return child, began, ended

            done = list(threads.map(one, range(concurrent_n)))
            walls.append(max(e for _, _, e in done) - min(b for _, b, _ in done))
            for i, (child, began, ended) in enumerate(done):
                forks.append(ended - began)
                try:
                    check_branch(child, expected[i % len(parents)])
                finally:
                    child.close()
    wall = percentiles(walls)
    return {**percentiles(forks), "rounds": rounds, "concurrent": concurrent_n, "parents": len(parents),
            "round_wall_p50_ms": wall["p50_ms"], "round_wall_p99_ms": wall["p99_ms"]}


def bench_branching(backend: str, concurrent_n: int, rounds: int, cold_rounds: int) -> dict[str, Any]:
    """Forks under branching load, `concurrent_n` at once: (a) `pool`: one fork of each of
    `concurrent_n` live sandboxes (ARPO with beam 2: one branch per source), into warm sandboxes
    of a pool sized so every child is warm; (b) `pool_two_per_parent`: two forks of each of half
    as many (a larger beam, Tree-GRPO); (c) `cold`: as (a) without a pool, each child started."""
    out: dict[str, Any] = {}
    for key, parents in (("pool", concurrent_n), ("pool_two_per_parent", max(1, concurrent_n // 2))):
        with SandboxPool(size=parents + concurrent_n, backend=backend, start_workers=4) as pool:
            held = [pool.acquire() for _ in range(parents)]
            expected = [branch_parent(p) for p in held]
            out[key] = concurrent_forks(held, expected, concurrent_n, rounds,
                                        lambda: wait_for_warm(pool, concurrent_n))
            out[key]["pool_size"] = pool.size
            for parent in held:
                pool.release(parent)
    if cold_rounds:
        cold_parents = [create(backend) for _ in range(concurrent_n)]
        try:
            expected = [branch_parent(p) for p in cold_parents]
            out["cold"] = concurrent_forks(cold_parents, expected, concurrent_n, cold_rounds, lambda: None)
        finally:
            for parent in cold_parents:
                parent.close()
    return out


def bench_docker_run(n: int) -> dict[str, float]:
    from agentrl.sandboxes.docker_backend import docker_client
    from agentrl.sandboxes.image import IMAGE

    client = docker_client()
    run = lambda: client.containers.run(  # noqa: E731
        IMAGE, ["/usr/bin/python3", "-S", "-c", "print(1)"], remove=True, network_mode="none"
    )
    run()
    return percentiles(timed(run, n))


def bench_subprocess(n: int) -> dict[str, float]:
    python = find_python()
    run = lambda: subprocess.run([python, "-S", "-c", "print(1)"], capture_output=True, check=True)  # noqa: E731
    run()
    return percentiles(timed(run, n))


def machine() -> str:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} vCPU ({cpu}), {mem:.0f} GiB RAM, Linux {platform.release()}, Python {platform.python_version()}"


def table(results: dict[str, Any]) -> str:
    rows = [("measure", *results["backends"].keys())]

    def add(label: str, key: str, field: str = "p50_ms") -> None:
        rows.append((label, *[fmt(b.get(key, {}).get(field)) for b in results["backends"].values()]))

    add("start a sandbox, p50 ms", "start")
    add("print(1) warm, p50 ms", "print1")
    add("print(1) warm, p99 ms", "print1", "p99_ms")
    add("10 ms compute cell, p50 ms", "compute_10ms")
    add("10 ms compute cell, p99 ms", "compute_10ms", "p99_ms")
    add("state-carrying call, p50 ms", "stateful")
    add("state-carrying call, p99 ms", "stateful", "p99_ms")
    add("fork (fresh sandbox), p50 ms", "fork_replay_cold")
    add("fork (warm pool sandbox), p50 ms", "fork_replay_pool")
    rows.append(("os.fork inside the sandbox (rejected option), ms",
                 *[fmt(b.get("in_boundary_fork_ms")) for b in results["backends"].values()]))
    rows.append(("pool of 4, 8 workers: calls/s",
                 *[fmt(b.get("pool", {}).get("calls_per_s")) for b in results["backends"].values()]))
    rows.append(("pool of 4, 8 workers: trajectories/s (5 calls)",
                 *[fmt(b.get("pool", {}).get("trajectories_per_s")) for b in results["backends"].values()]))
    base = results["baselines"]
    for name, label in (("docker_run", "fresh `docker run` per call"), ("subprocess", "fresh subprocess per call")):
        if name in base:
            rows.append((f"{label}, p50 ms", fmt(base[name]["p50_ms"]), ""))
    return aligned_table(rows)


def branching_table(results: dict[str, Any]) -> str:
    """Forks under branching load: one row per backend and setting."""
    rows: list[tuple[str, ...]] = [("backend", "setting", "forks", "fork p50 ms", "fork p99 ms",
                                    "round wall p50 ms", "round wall p99 ms", "all exact")]
    settings = (("pool", "warm pool, one fork per parent"), ("pool_two_per_parent", "warm pool, two forks per parent"),
                ("cold", "no pool (cold start), one fork per parent"))
    for backend, numbers in results["backends"].items():
        for key, label in settings:
            b = numbers.get("branching", {}).get(key)
            if b is None:
                continue
            rows.append((backend, f"{label}, {b['concurrent']} at once", str(b["n"]), fmt(b["p50_ms"]),
                         fmt(b["p99_ms"]), fmt(b["round_wall_p50_ms"]), fmt(b["round_wall_p99_ms"]), "yes"))
    return aligned_table(rows)


def aligned_table(rows: list[tuple]) -> str:
    """A markdown table whose first row is the header, columns padded to line up."""
    width = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, width)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in width) + "|")
    return "\n".join(lines)


def fmt(value: Any) -> str:
    """A table cell: "-" for a missing value, integers as they are, 2 decimals below 100."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="docker,bwrap")
    parser.add_argument("--parts", default="calls,branching",
                        help="calls (warm calls, single forks, pool throughput), branching (concurrent forks)")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--concurrent", type=int, default=16, help="forks issued at once per round")
    parser.add_argument("--rounds", type=int, default=20, help="rounds of concurrent forks into a warm pool")
    parser.add_argument("--cold-rounds", type=int, default=5, help="rounds of concurrent forks without a pool")
    parser.add_argument("--out", default="runs/bench/sandbox_latency.json")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    unknown = parts - {"calls", "branching"}
    if unknown:
        parser.error(f"unknown --parts {sorted(unknown)}; choose from calls, branching")
    if args.concurrent < 2 or args.rounds < 1 or args.cold_rounds < 0:
        parser.error("--concurrent must be at least 2, --rounds at least 1, --cold-rounds at least 0")
    results: dict[str, Any] = {"machine": machine(), "command": " ".join(sys.argv), "backends": {}, "baselines": {}}
    ready = {"docker": docker_ready, "bwrap": bwrap_ready}
    for backend in args.backends.split(","):
        ok, why = ready[backend]()
        if not ok:
            print(f"skipping {backend}: {why}", file=sys.stderr)
            continue
        print(f"benchmarking {backend} ...", file=sys.stderr)
        numbers = results["backends"][backend] = bench_backend(backend, args.calls) if "calls" in parts else {}
        if "branching" in parts:
            print(f"forks under branching load on {backend} ...", file=sys.stderr)
            load_before = os.getloadavg()[0]
            numbers["branching"] = bench_branching(backend, args.concurrent, args.rounds, args.cold_rounds)
            # Other jobs on the machine slow the sandboxed side most (it runs at nice 10).
            numbers["branching"]["load_average_1min"] = [load_before, os.getloadavg()[0]]
    if "calls" in parts:
        if "docker" in results["backends"]:
            results["baselines"]["docker_run"] = bench_docker_run(10)
        results["baselines"]["subprocess"] = bench_subprocess(50)
    for backend, numbers in results["backends"].items():
        ref = results["baselines"].get("docker_run", {}).get("p50_ms")
        if ref and "print1" in numbers:
            numbers["speedup_vs_docker_run"] = ref / numbers["print1"]["p50_ms"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"machine: {results['machine']}")
    if "calls" in parts:
        print(table(results))
    if "branching" in parts:
        print(branching_table(results))
        for backend, numbers in results["backends"].items():
            before, after = numbers["branching"]["load_average_1min"]
            print(f"{backend}: 1-minute load average {before:.1f} before the forks, {after:.1f} after")
    for backend, numbers in results["backends"].items():
        if "speedup_vs_docker_run" in numbers:
            print(f"{backend}: warm print(1) is {numbers['speedup_vs_docker_run']:.0f}x faster than docker run per call")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
