"""The Sandbox API on both backends: state, results, fork, files, async, leaks over time."""

from __future__ import annotations

import asyncio
import gc

import pytest

from agentrl.sandboxes import STATUSES, SandboxClosedError, create

from .conftest import SMALL, LeakSnapshot, open_fds


def test_state_carries_between_calls(sandbox):
    assert sandbox.run("import math\nx = 20").ok
    sandbox.run("def double(v):\n    return 2 * v")
    sandbox.run("open('notes.txt', 'w').write('kept')")
    result = sandbox.run("print(double(x) + math.floor(1.5))\nopen('notes.txt').read()")
    assert result.status == "ok"
    assert result.stdout == "41\n'kept'\n"
    assert result.exit_code == 0 and result.stderr == ""


def test_exceptions_give_a_short_traceback(sandbox):
    result = sandbox.run("def f():\n    raise ValueError('bad value')\nf()")
    assert result.status == "error" and result.exit_code == 1
    assert 'File "<cell 1>", line 2, in f' in result.stderr
    assert result.stderr.rstrip().endswith("ValueError: bad value")
    assert "repl_server" not in result.stderr


def test_syntax_error_and_exit_codes(sandbox):
    assert sandbox.run("def (").status == "error"
    assert "SyntaxError" in sandbox.run("def (").stderr
    assert sandbox.run("import sys\nsys.exit(0)").status == "ok"
    exited = sandbox.run("import sys\nsys.exit(3)")
    assert exited.status == "error" and exited.exit_code == 3
    assert sandbox.run("print('alive')").stdout == "alive\n"


def test_every_status_is_known(sandbox):
    for code in ("1", "1/0", "import time\ntime.sleep(5)", "bytearray(10 ** 10)"):
        assert sandbox.run(code, timeout=1).status in STATUSES


def test_fork_copies_state_and_is_independent(sandbox):
    sandbox.run("items = [1, 2]")
    sandbox.write_file("data.txt", "from the parent")
    with sandbox.fork() as child:
        assert child.fork_exact
        assert child.run("items.append(3)\nprint(items, open('data.txt').read())").stdout == (
            "[1, 2, 3] from the parent\n"
        )
        child.run("open('data.txt', 'w').write('changed by the child')")
        assert sandbox.run("print(items, open('data.txt').read())").stdout == "[1, 2] from the parent\n"


def test_fork_copies_even_nondeterministic_state(sandbox):
    printed = sandbox.run("import os\ntoken = os.urandom(8).hex()\nprint(token)").stdout
    with sandbox.fork() as child:
        assert child.fork_exact
        assert child.run("print(token)").stdout == printed


def test_fork_after_state_loss_starts_fresh(sandbox):
    sandbox.run("x = 1")
    sandbox.run("import os\nos._exit(7)")
    with sandbox.fork() as child:
        assert child.run("print('x' in globals())").stdout == "False\n"


def test_os_exit_is_reported(sandbox):
    result = sandbox.run("import os\nos._exit(7)")
    assert result.status == "error" and result.exit_code == 7 and result.state_lost


def test_processes_the_server_cannot_remove_get_the_sandbox_replaced(sandbox):
    sandbox.run("kept = 1")
    # The cell runs inside the server, so it can stand in for a server whose cleanup ran out of
    # time: from now on the server reports two processes it could not remove after each call.
    result = sandbox.run(
        "import sys\nsys.modules['__main__'].Server._kill_others = lambda self: 2\nprint('patched')"
    )
    assert result.status == "ok" and result.stdout == "patched\n"
    assert result.state_lost
    assert "[sandbox] 2 process(es) started by the call were still running" in result.stderr
    after = sandbox.run("print('kept' in globals())")
    assert after.stdout == "False\n" and not after.state_lost


def test_arun_runs_off_the_event_loop(make_sandbox):
    first, second = make_sandbox(), make_sandbox()

    async def both():
        return await asyncio.gather(
            first.arun("import time\ntime.sleep(0.5)\nprint('a')"),
            second.arun("import time\ntime.sleep(0.5)\nprint('b')"),
        )

    a, b = asyncio.run(both())
    assert (a.stdout, b.stdout) == ("a\n", "b\n")


def test_closed_sandbox_refuses_calls(make_sandbox):
    sandbox = make_sandbox()
    sandbox.close()
    sandbox.close()
    assert not sandbox.alive
    with pytest.raises(SandboxClosedError):
        sandbox.run("1")


def test_context_manager_closes(backend):
    snapshot = LeakSnapshot(socket_slack=24 if backend == "docker" else 0)
    with create(backend, **SMALL) as sandbox:
        assert sandbox.run("print(1)").stdout == "1\n"
    assert sandbox.closed
    snapshot.assert_nothing_new()


def test_nothing_accumulates_over_many_sandboxes(backend):
    """Start, crash, time out and close sandboxes repeatedly: open fds stay flat."""

    def cycle() -> None:
        with create(backend, **SMALL) as sandbox:
            sandbox.run("import ctypes\nctypes.string_at(0)")
            sandbox.run("import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True: pass", timeout=0.3)
            sandbox.run("print(1)")

    for _ in range(2):  # warm up pooled connections of the docker client
        cycle()
    gc.collect()
    before = len(open_fds())
    snapshot = LeakSnapshot(socket_slack=24 if backend == "docker" else 0)
    for _ in range(4):
        cycle()
    gc.collect()
    assert len(open_fds()) <= before
    snapshot.assert_nothing_new()
