"""SandboxPool on both backends: checkout, recycling, fairness, health checks, metrics."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from agentrl.sandboxes import SandboxPool

from .conftest import SMALL, LeakSnapshot


@pytest.fixture
def pool(backend):
    snapshot = LeakSnapshot(socket_slack=24 if backend == "docker" else 0)
    pool = SandboxPool(size=2, backend=backend, **SMALL)
    yield pool
    pool.close()
    snapshot.assert_nothing_new()


def test_checkout_runs_and_recycles(pool):
    with pool.sandbox() as sandbox:
        assert sandbox.run("x = 1\nprint(x)").stdout == "1\n"
    with pool.sandbox() as sandbox:
        assert sandbox.run("print('x' in globals())").stdout == "False\n"
    stats = pool.stats()
    assert stats["sandbox/checkouts"] == 2
    assert stats["sandbox/recycles"] == 2
    assert stats["sandbox/calls"] == 2
    assert stats["sandbox/status/ok"] == 2
    assert stats["sandbox/latency_p50_ms"] > 0


def _wait_until(condition, what: str, limit: float = 60.0) -> None:
    """Poll `condition` (a state change, not a speed: the limit only stops a hung test)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting until {what}"
        time.sleep(0.01)


def test_concurrency_is_bounded_and_fair(pool):
    held = [pool.acquire(), pool.acquire()]
    order: list[int] = []

    def waiter(i: int) -> None:
        with pool.sandbox(timeout=60):
            order.append(i)

    threads = []
    for i in range(3):
        thread = threading.Thread(target=waiter, args=(i,))
        thread.start()
        threads.append(thread)
        # Queue them in a known order: the next one starts once this one waits in the pool.
        _wait_until(lambda: pool.stats()["sandbox/pool_waiting"] == i + 1, f"waiter {i} queues")
    with pytest.raises(TimeoutError):
        pool.acquire(timeout=0.2)
    assert order == []
    # One sandbox back: the waiters pass it on one after the other, first come first served.
    pool.release(held[0])
    for thread in threads:
        thread.join(60)
    assert order == [0, 1, 2]
    pool.release(held[1])


def test_crashed_sandbox_is_replaced(pool):
    with pool.sandbox() as sandbox:
        result = sandbox.run("import os\nos.abort()")
        assert result.status == "error" and result.state_lost
        assert sandbox.run("print('fresh')").stdout == "fresh\n"
    assert pool.stats()["sandbox/restarts"] >= 1
    assert pool.stats()["sandbox/status/error"] == 1


def test_health_check_replaces_a_dead_idle_sandbox(pool):
    with pool.sandbox() as sandbox:
        pass
    deadline = time.monotonic() + 30
    while pool.stats()["sandbox/pool_idle"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    victim = pool._idle[0]
    victim._kill()  # the interpreter dies while idle
    with pool.sandbox() as sandbox:
        assert sandbox.run("print(2)").stdout == "2\n"
    assert pool.stats()["sandbox/restarts"] >= 1


def test_fork_draws_from_the_pool(pool):
    with pool.sandbox() as sandbox:
        sandbox.run("y = 5")
        child = sandbox.fork()
        try:
            assert child.run("print(y)").stdout == "5\n"
        finally:
            pool.release(child)


def test_async_checkout(pool):
    async def trajectory(i: int) -> str:
        async with pool.asandbox() as sandbox:
            result = await sandbox.arun(f"print({i} * 2)")
            return result.stdout

    async def main() -> list[str]:
        return await asyncio.gather(*(trajectory(i) for i in range(4)))

    assert asyncio.run(main()) == ["0\n", "2\n", "4\n", "6\n"]
