"""Forking a sandbox whose interpreter was killed from outside (the server process killed on
bwrap, ``docker kill`` on docker) between its last call and the fork.

The state to copy is gone, so the fork raises one `SandboxError` that says so, never a replay of
the parent's calls (a branch must not run its prefix again) and never `EnvForkError` (which tells
the rollout engine to replay the actions on a fresh env). A sandbox of a pool that fails this way
does not poison the pool: the next checkout and the next fork work.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import time

import pytest

from agentrl.envs.base import EnvForkError
from agentrl.sandboxes import Sandbox, SandboxClosedError, SandboxError, SandboxPool

from .conftest import SMALL, descendants

STATE = "import random\nrandom.random()\nkept = random.random()\nopen('notes.txt', 'w').write('kept')"
SHOW = "print(repr(kept), open('notes.txt').read(), hash(random.getstate()))"
KILLED = r"cannot fork this (bwrap|docker) sandbox: its interpreter was killed \(SIGKILL\) after its last call"


def kill_interpreter(sandbox: Sandbox) -> None:
    """Kill the sandbox's interpreter from outside, as an OOM killer or an operator would,
    and wait until it is gone; the sandbox object is not told."""
    if sandbox.backend == "docker":
        container = sandbox._container  # type: ignore[attr-defined]
        container.kill()
        container.wait(timeout=30)
        return
    process = sandbox._process  # type: ignore[attr-defined]
    servers = [pid for pid in descendants(process.pid) if _is_python(pid)]
    assert servers, "the bwrap sandbox's server process was not found"
    for pid in servers:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


def _is_python(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"python" in f.read().split(b"\0")[0]
    except OSError:
        return False


def test_fork_of_a_killed_interpreter_raises_a_sandbox_error_naming_the_cause(make_sandbox):
    sandbox = make_sandbox()
    assert sandbox.run(STATE).ok
    kill_interpreter(sandbox)
    with pytest.raises(SandboxError, match=KILLED) as caught:
        sandbox.fork()
    assert not isinstance(caught.value, (SandboxClosedError, EnvForkError))
    assert "the state to copy is gone" in str(caught.value)
    # Another fork is no copy of the empty interpreter either: it raises the same, until a call.
    with pytest.raises(SandboxError, match=KILLED):
        sandbox.fork()
    # The sandbox itself is usable again: a fresh interpreter, without the lost state, which
    # forks copy.
    assert sandbox.run("print('kept' in globals())\nfresh = 1").stdout == "False\n"
    with sandbox.fork() as child:
        assert child.fork_exact and child.run("print(fresh)").stdout == "1\n"


def test_forks_taken_at_once_of_a_killed_interpreter_all_raise(make_sandbox):
    # A branching round forks a source several times at once: every branch fails, none gets a
    # fresh interpreter that the transcript does not match.
    sandbox = make_sandbox()
    assert sandbox.run(STATE).ok
    kill_interpreter(sandbox)
    with concurrent.futures.ThreadPoolExecutor(4) as threads:
        outcomes = list(threads.map(lambda _: _fork_or_error(sandbox), range(4)))
    assert all(isinstance(outcome, SandboxError) for outcome in outcomes), outcomes
    assert all(re.search(KILLED, str(outcome)) for outcome in outcomes)


def _fork_or_error(sandbox: Sandbox) -> Sandbox | Exception:
    try:
        child = sandbox.fork()
    except Exception as exc:  # noqa: BLE001 - the outcome under test
        return exc
    child.close()
    return child


def test_a_killed_pool_sandbox_does_not_poison_the_pool(backend):
    with SandboxPool(size=3, backend=backend, **SMALL) as pool:
        parent = pool.acquire()
        assert parent.run(STATE).ok
        kill_interpreter(parent)
        with pytest.raises(SandboxError, match=KILLED):
            parent.fork()
        pool.release(parent)
        # No sandbox was taken for the failed fork; the next checkout and fork are whole.
        with pool.sandbox(timeout=60) as again:
            assert again.run(STATE).ok
            with again.fork() as child:
                assert child.fork_exact, child.fork_note
                assert child.run(SHOW).stdout == again.run(SHOW).stdout
        deadline = time.monotonic() + 60
        while pool.stats()["sandbox/pool_idle"] < pool.size and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.stats()["sandbox/pool_idle"] == pool.size


def test_a_killed_warm_sandbox_taken_for_a_fork_is_replaced_not_replayed(backend):
    # The fork's target dies, not the parent: the copy goes into another fresh sandbox, so the
    # branch is still exact and the parent's calls are not run again.
    with SandboxPool(size=2, backend=backend, **SMALL) as pool:
        with pool.sandbox(timeout=60) as parent:
            assert parent.run(STATE).ok
            deadline = time.monotonic() + 60
            while pool.stats()["sandbox/pool_idle"] < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            idle = pool._idle[0]
            kill_interpreter(idle)
            with parent.fork() as child:
                assert child is not idle and idle.closed
                assert child.fork_exact, child.fork_note
                assert child.run(SHOW).stdout == parent.run(SHOW).stdout


def test_a_tool_env_fork_of_a_killed_sandbox_is_an_infrastructure_error(backend):
    from agentrl.envs.tool_env import Task, ToolEnv
    from agentrl.tools.python import PythonTool

    tool = PythonTool(backend=backend, timeout=5.0, memory_mb=128, pids=32)
    env = ToolEnv(tools=[tool], tasks=[Task("Draw a number.")], reward_fn=lambda task, episode: 0.0,
                  max_turns=4, call_timeout=60.0)
    env.reset(seed=0)
    try:
        env.step(f"<python>{STATE}</python>")
        assert tool.sandbox is not None
        kill_interpreter(tool.sandbox)
        with pytest.raises(SandboxError, match=KILLED) as caught:
            env.fork()
        assert not isinstance(caught.value, EnvForkError)  # the engine drops the branch, no replay
    finally:
        env.close()


def test_after_a_failed_fork_the_parent_is_told_its_state_is_gone_and_nothing_leaks(backend):
    """The parent's next call runs in a fresh interpreter and says so (its variables are gone);
    a tool env whose second tool fails to fork closes what the first one's fork started."""
    from agentrl.envs.tool_env import Task, ToolEnv
    from agentrl.tools.python import STATE_LOST_NOTE, PythonTool

    healthy = PythonTool(backend=backend, timeout=5.0, memory_mb=128, pids=32)
    tool = PythonTool(backend=backend, timeout=5.0, memory_mb=128, pids=32)
    env = ToolEnv(tools=[healthy], tasks=[Task("Draw a number.")], reward_fn=lambda task, episode: 0.0,
                  max_turns=4, call_timeout=60.0)
    env.tools = {"python": healthy, "python_second": tool}  # forked in this order
    env.reset(seed=0)
    started = []
    original = Sandbox.fork

    def recording_fork(self):
        child = original(self)
        started.append(child)
        return child

    try:
        import asyncio

        asyncio.run(healthy.call(healthy.Args(code=STATE)))
        asyncio.run(tool.call(tool.Args(code=STATE)))
        kill_interpreter(tool.sandbox)
        Sandbox.fork = recording_fork
        try:
            with pytest.raises(SandboxError, match=KILLED):
                env.fork()
        finally:
            Sandbox.fork = original
        # The healthy tool's fork was made and then closed, not left running.
        assert len(started) == 1 and started[0].closed
        after = asyncio.run(tool.call(tool.Args(code="print('still here')")))
        assert "still here" in after.text and STATE_LOST_NOTE in after.text
    finally:
        env.close()
