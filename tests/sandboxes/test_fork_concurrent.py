"""Forks taken at the same time, as a branching round takes them (from the rollout engine's
thread pool), on both backends: forks of one parent taken at once copy its state once and share
the copy, a call in between makes the next fork copy again, and many forks of several parents
each hold their own parent's exact state."""

from __future__ import annotations

import concurrent.futures
import threading

from agentrl.sandboxes import Sandbox, SandboxPool

from .conftest import SMALL

STATE = "import random\nrandom.random()\nlabel = {label!r}\nvalue = random.random()\nopen('who.txt', 'w').write(label)"
SHOW = "print(label, repr(value), open('who.txt').read(), hash(random.getstate()))"


def count_snapshots(sandbox: Sandbox, monkeypatch) -> list[int]:
    """A list that grows by one each time `sandbox` copies its state."""
    taken: list[int] = []
    snapshot = sandbox._snapshot

    def counted() -> tuple[bytes | None, str]:
        taken.append(1)
        return snapshot()

    monkeypatch.setattr(sandbox, "_snapshot", counted)
    return taken


def test_forks_taken_at_once_share_one_copy_of_the_state(make_sandbox, monkeypatch):
    parent = make_sandbox()
    assert parent.run(STATE.format(label="parent")).ok
    expected = parent.run(SHOW).stdout
    snapshots = count_snapshots(parent, monkeypatch)
    # Every fork waits for the others before it takes its sandbox, so all four are under way
    # together however the threads are scheduled.
    together = threading.Barrier(4)

    def source() -> Sandbox:
        together.wait(timeout=60)
        return parent._spawn().start()

    parent.fork_source = source
    with concurrent.futures.ThreadPoolExecutor(4) as threads:
        children = list(threads.map(lambda _: parent.fork(), range(4)))
    try:
        assert len(snapshots) == 1
        for child in children:
            assert child.fork_exact, child.fork_note
            assert child.run(SHOW).stdout == expected
    finally:
        for child in children:
            child.close()
    parent.fork_source = None
    with parent.fork() as later:  # nothing under way any more: a new copy
        assert later.run(SHOW).stdout == expected
    assert len(snapshots) == 2


def test_a_call_between_two_forks_under_way_makes_the_second_copy_the_new_state(make_sandbox, monkeypatch):
    parent = make_sandbox()
    assert parent.run(STATE.format(label="before")).ok
    snapshots = count_snapshots(parent, monkeypatch)
    first_waits, release_first = threading.Event(), threading.Event()
    calls = []

    def source() -> Sandbox:
        calls.append(1)
        if len(calls) == 1:  # the first fork holds its copy and waits here
            first_waits.set()
            release_first.wait(timeout=60)
        return parent._spawn().start()

    parent.fork_source = source
    with concurrent.futures.ThreadPoolExecutor(1) as threads:
        first = threads.submit(parent.fork)
        assert first_waits.wait(timeout=60)
        assert parent.run("label = 'after'").ok
        with parent.fork() as second:
            assert second.run("print(label)").stdout == "after\n"
        release_first.set()
        with first.result(timeout=60) as earlier:
            assert earlier.run("print(label)").stdout == "before\n"
    assert len(snapshots) == 2


def test_many_forks_of_several_parents_at_once_each_hold_their_parents_state(backend):
    parents_n, forks_n = 4, 8
    with SandboxPool(size=parents_n + forks_n, backend=backend, start_workers=4, **SMALL) as pool:
        parents = [pool.acquire(timeout=120) for _ in range(parents_n)]
        expected = []
        for i, parent in enumerate(parents):
            assert parent.run(STATE.format(label=f"parent {i}")).ok
            expected.append(parent.run(SHOW).stdout)
        with concurrent.futures.ThreadPoolExecutor(forks_n) as threads:
            children = list(threads.map(lambda i: parents[i % parents_n].fork(), range(forks_n)))
        try:
            for i, child in enumerate(children):
                assert child.fork_exact, child.fork_note
                assert child.run(SHOW).stdout == expected[i % parents_n]
        finally:
            for sandbox in children + parents:
                pool.release(sandbox)
