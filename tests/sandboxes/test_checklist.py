"""Every row of the sandbox checklist (docs/sandboxes.md), against both backends.

Each test runs real hostile code in a real sandbox; the `make_sandbox` fixture then checks that
no process, container, temp entry, mount or file descriptor was left behind.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
import uuid

import pytest

from agentrl.sandboxes import SandboxError, SandboxPool
from agentrl.sandboxes.sandbox import SANDBOX_ENV, WORKDIR
from .conftest import SMALL


def sandbox_pids(sandbox) -> list[str]:
    """Processes visible inside the sandbox, besides the REPL server's own."""
    result = sandbox.run(
        "import os\n"
        "me = os.getpid()\n"
        "sorted(p for p in os.listdir('/proc') if p.isdigit() and int(p) not in (1, me))"
    )
    assert result.ok, result.stderr
    return eval(result.stdout)


def host_responsive(limit: float = 3.0) -> float:
    """Seconds the host needs to start a trivial process (must stay small under attack)."""
    began = time.monotonic()
    subprocess.run(["true"], check=True, timeout=limit)
    return time.monotonic() - began


# 1 -------------------------------------------------------------------------------------------
def test_01_cpu_spin_times_out_and_keeps_output(sandbox):
    result = sandbox.run("print('before', flush=True)\nwhile True:\n    pass", timeout=1)
    assert result.status == "timeout"
    assert "before" in result.stdout
    assert 1.0 <= result.duration < 1.0 + SMALL["grace"] + 1.0
    assert not result.state_lost
    assert sandbox.run("print('still here')").stdout == "still here\n"


def test_01_spin_that_ignores_the_alarm_is_killed_by_the_host(sandbox):
    sandbox.run("x = 1")
    code = "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass"
    result = sandbox.run(code, timeout=1)
    assert result.status == "timeout"
    assert result.state_lost
    assert result.duration < 1.0 + SMALL["grace"] + 2.0
    after = sandbox.run("print('x' in globals())")
    assert after.status == "ok" and after.stdout == "False\n"


# 2 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code",
    [
        "import time\ntime.sleep(60)",
        "import os\nr, w = os.pipe()\nos.read(r, 1)",
        "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen()\ns.accept()",
    ],
    ids=["sleep", "pipe-read", "accept"],
)
def test_02_blocking_times_out_by_wall_clock(sandbox, code):
    result = sandbox.run(code, timeout=1)
    assert result.status == "timeout"
    assert result.duration < 1.0 + SMALL["grace"] + 1.0


def test_02_stdin_is_empty_not_blocking(sandbox):
    result = sandbox.run("import sys\nprint(repr(sys.stdin.read()))\ninput()", timeout=2)
    assert result.status == "error"
    assert "''" in result.stdout and "EOFError" in result.stderr
    assert result.duration < 1.5


# 3 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code",
    [
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        "import subprocess\nsubprocess.run(['sh', '-c', 'b() { b | b & }; b; sleep 3'])",
    ],
    ids=["python", "shell"],
)
def test_03_fork_bomb_hits_the_pids_limit(sandbox, code):
    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            latencies.append(host_responsive())
            time.sleep(0.1)

    watcher = threading.Thread(target=probe)
    watcher.start()
    try:
        result = sandbox.run(code, timeout=1.5)
    finally:
        stop.set()
        watcher.join()
    assert result.status in ("timeout", "ok", "error")
    assert latencies and max(latencies) < 2.0, f"host slowed down: {max(latencies):.2f} s"
    # All of the bomb is gone once the call ended.
    assert sandbox_pids(sandbox) == []


def test_03_fork_bomb_fails_at_the_limit(sandbox):
    code = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range(1000):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print('stopped at', n, e.errno)"
    )
    result = sandbox.run(code, timeout=5)
    assert result.status == "ok", result.stderr
    count = int(result.stdout.split()[2])
    assert count < SMALL["pids"]


# 4 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code",
    ["x = bytearray(1024 ** 3)", "chunks = []\nwhile True:\n    chunks.append(bytearray(8 * 1024 * 1024))"],
    ids=["one-big", "many-small"],
)
def test_04_memory_over_the_limit_is_oom(sandbox, code):
    result = sandbox.run(code, timeout=10)
    assert result.status == "oom", (result.status, result.stderr)
    assert sandbox.run("print(1 + 1)").stdout == "2\n"


def test_04_memory_of_a_child_process_is_bounded(sandbox):
    code = "import subprocess\nr = subprocess.run(['python3', '-S', '-c', 'x = bytearray(2 * 1024 ** 3)'])\nprint(r.returncode)"
    result = sandbox.run(code, timeout=10)
    assert result.status == "ok"
    assert result.stdout.strip() != "0"


# 5 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["/workspace/big", "/tmp/big", "/dev/shm/big"])
def test_05_big_file_hits_the_size_limit(sandbox, where):
    code = (
        f"f = open({where!r}, 'wb')\n"
        "block = b'x' * (1024 * 1024)\n"
        "for i in range(64):\n"
        "    f.write(block)\n"
        "    f.flush()\n"
    )
    result = sandbox.run(code, timeout=10)
    assert result.status == "error"
    assert "OSError" in result.stderr or "File too large" in result.stderr or "No space" in result.stderr


def test_05_many_small_files_hit_the_limit(sandbox):
    code = (
        "import os\n"
        "n = 0\n"
        "try:\n"
        "    while n < 200000:\n"
        "        with open(f'f{n}', 'w') as f:\n"
        "            f.write('x')\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print('stopped', n, e.errno)"
    )
    result = sandbox.run(code, timeout=20)
    assert result.status == "ok", result.stderr
    assert result.stdout.startswith("stopped")


@pytest.mark.parametrize("where", ["/big", "/usr/big", "/etc/big", "/home/big"])
def test_05_root_file_system_is_read_only(sandbox, where):
    result = sandbox.run(f"open({where!r}, 'wb').write(b'x')")
    assert result.status == "error"
    assert "Error" in result.stderr


# 6 -------------------------------------------------------------------------------------------
def test_06_background_processes_do_not_outlive_the_call(sandbox):
    started = sandbox.run("import subprocess\np = subprocess.Popen(['sleep', '100'])\nprint(p.pid)")
    assert started.ok
    assert sandbox_pids(sandbox) == []


def test_06_next_trajectory_sees_nothing(backend):
    with SandboxPool(size=1, backend=backend, **SMALL) as pool:
        with pool.sandbox() as first:
            first.run("open('/workspace/left', 'w').write('x')\nopen('/tmp/left', 'w').write('x')\nsecret = 42")
        with pool.sandbox() as second:
            result = second.run(
                "import os\nprint(os.listdir('/workspace'), os.path.exists('/tmp/left'), 'secret' in globals())"
            )
    assert result.stdout == "[] False False\n"


# 7 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code",
    [
        "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=10)",
        "import socket\nsocket.getaddrinfo('pypi.org', 443)",
        "import urllib.request\nurllib.request.urlopen('http://deb.debian.org/', timeout=10)",
        "import subprocess, sys\nr = subprocess.run([sys.executable, '-m', 'pip', 'install', 'requests'])\nassert r.returncode == 0",
    ],
    ids=["connect", "resolve", "http", "pip"],
)
def test_07_network_fails_fast(sandbox, code):
    result = sandbox.run(code, timeout=10)
    assert result.status == "error"
    assert result.duration < 3.0


def test_07_loopback_works(sandbox):
    code = (
        "import socket, threading\n"
        "srv = socket.socket()\nsrv.bind(('127.0.0.1', 0))\nsrv.listen()\n"
        "def echo():\n    c, _ = srv.accept()\n    c.sendall(c.recv(100).upper())\n    c.close()\n"
        "threading.Thread(target=echo).start()\n"
        "cli = socket.create_connection(srv.getsockname(), timeout=5)\ncli.sendall(b'ping')\n"
        "print(cli.recv(100))"
    )
    result = sandbox.run(code)
    assert result.stdout == "b'PING'\n", result.stderr


# 8 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code",
    [
        "print(open('/etc/shadow').read())",
        "import os\nprint(os.listdir('/root'))",
        "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('/var/run/docker.sock')",
        "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('/run/docker.sock')",
    ],
    ids=["shadow", "root", "docker-sock", "run-docker-sock"],
)
def test_08_host_secrets_are_absent_or_denied(sandbox, code):
    result = sandbox.run(code)
    assert result.status == "error"
    assert "PermissionError" in result.stderr or "FileNotFoundError" in result.stderr


def test_08_environment_is_an_allowlist(make_sandbox, monkeypatch):
    monkeypatch.setenv("AGENTRL_TEST_SECRET", "hunter2")
    sandbox = make_sandbox()
    result = sandbox.run("import os\nprint(sorted(os.environ))\nprint('hunter2' in str(os.environ))")
    names = eval(result.stdout.splitlines()[0])
    assert set(names) <= {"PATH", "HOME", "LANG", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE",
                          "PYTHONIOENCODING", "HOSTNAME", "PWD"}
    assert result.stdout.splitlines()[1] == "False"


def test_08_no_process_in_the_sandbox_exposes_the_host_environment(make_sandbox, monkeypatch):
    # What any process of the sandbox may carry in its environment: the allowlist with its fixed
    # values, plus what the runtime itself sets (docker: HOSTNAME; a shell or os.chdir: PWD).
    allowed = {f"{name}={value}".encode() for name, value in SANDBOX_ENV.items()}
    allowed |= {b"HOSTNAME=sandbox", f"PWD={WORKDIR}".encode()}
    secret = f"agentrl-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("AGENTRL_TEST_SECRET", secret)
    # Room in the output for every process's command line (the server's source is one argument).
    sandbox = make_sandbox(max_output_bytes=1 << 20, output_limit_bytes=4 << 20)
    # A child process is started first, so the check covers more than the server and pid 1.
    result = sandbox.run(
        "import json, os, subprocess\n"
        "child = subprocess.Popen(['sleep', '30'])\n"
        "seen = {}\n"
        "for pid in os.listdir('/proc'):\n"
        "    for part in ('environ', 'cmdline'):\n"
        "        try:\n"
        "            seen[f'{pid}/{part}'] = open(f'/proc/{pid}/{part}', 'rb').read().hex()\n"
        "        except OSError:\n"
        "            pass\n"
        "print(json.dumps(seen))"
    )
    assert result.ok, result.stderr
    seen = {where: bytes.fromhex(raw) for where, raw in json.loads(result.stdout).items()}
    environs = {where: raw for where, raw in seen.items() if where.endswith("/environ")}
    # pid 1 (bwrap or docker-init), the server, its child and "self": nothing was skipped.
    assert {"1/environ", "self/environ"} <= set(environs) and len(environs) >= 4, sorted(environs)
    # Findings name the place and the variable, never the value (a test log is no place for it).
    findings = [f"/proc/{where} holds AGENTRL_TEST_SECRET" for where, raw in seen.items() if secret.encode() in raw]
    for where, raw in environs.items():
        for entry in raw.split(b"\0"):
            if entry and entry not in allowed:
                findings.append(f"/proc/{where} holds {entry.split(b'=')[0].decode(errors='replace')}")
    # Every other variable of the host: its value is no argument of any process either (values
    # shorter than 8 characters, such as "1" or "yes", match by chance and are not checked).
    own = set(SANDBOX_ENV.values()) | {"sandbox", WORKDIR}
    host_values = {
        name: value.encode()
        for name, value in os.environ.items()
        if len(value) >= 8 and value not in own and name != "AGENTRL_SANDBOX_PYTHON"
    }
    for where, raw in seen.items():
        if where.endswith("/cmdline"):
            arguments = set(raw.split(b"\0"))
            findings += [f"/proc/{where} holds the value of {name}" for name, value in host_values.items() if value in arguments]
    assert not findings, "the host environment reaches the sandbox:\n" + "\n".join(findings)


def test_08_host_processes_are_invisible(sandbox):
    result = sandbox.run(
        "import os\npids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "cmds = [open(f'/proc/{p}/cmdline', 'rb').read() for p in pids]\n"
        "print(len(pids), any(b'pytest' in c for c in cmds))"
    )
    count, saw_host = result.stdout.split()
    assert int(count) <= 3 and saw_host == "False"


# 9 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code",
    [
        "open('/proc/sys/kernel/hostname', 'w').write('pwned')",
        "open('/proc/sys/vm/drop_caches', 'w').write('3')",
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nassert libc.unshare(0x10000000) == 0",
        "import subprocess\nsubprocess.run(['unshare', '-U', 'true'], check=True)",
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nassert libc.ptrace(16, 1, 0, 0) == 0",
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nassert libc.syscall(250, 0, 0, 0, 0) >= 0",
    ],
    ids=["proc-sys-hostname", "proc-sys-vm", "unshare-user", "unshare-cmd", "ptrace-init", "keyctl"],
)
def test_09_kernel_surface_is_denied(sandbox, code):
    result = sandbox.run(code)
    assert result.status == "error", result.stdout


# 10 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code",
    [
        "import os, signal\nos.kill(-1, signal.SIGKILL)\nprint('done')",
        "import os, signal\nos.kill(1, signal.SIGKILL)\nprint('done')",
        "import os, signal\nos.kill(os.getppid(), signal.SIGTERM)\nimport time\ntime.sleep(0.5)\nprint('done')",
    ],
    ids=["kill-all", "kill-init", "term-parent"],
)
def test_10_signals_stay_inside(make_sandbox, code):
    bystander = make_sandbox()
    bystander.run("mark = 'alive'")
    attacker = make_sandbox()
    result = attacker.run(code)
    assert result.status in ("ok", "error")  # the harness reports the run either way
    assert bystander.run("print(mark)").stdout == "alive\n"
    assert attacker.run("print('next')").stdout == "next\n"


def test_10_host_pids_are_unreachable(sandbox):
    result = sandbox.run(f"import os\nos.kill({os.getpid()}, 9)")
    assert result.status == "error"
    assert "ProcessLookupError" in result.stderr


# 11 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code",
    [
        "while True:\n    print('x' * 100)",
        "import sys\nwhile True:\n    sys.stdout.write('y' * 10000)",
        "import sys\nwhile True:\n    sys.stderr.write('z' * 10000)",
        "import subprocess\nsubprocess.run(['yes'])",
    ],
    ids=["lines", "no-newlines", "stderr", "child"],
)
def test_11_output_flood_is_stopped_and_truncated(sandbox, code):
    result = sandbox.run(code, timeout=5)
    assert result.status in ("output_limit", "timeout")
    assert result.truncated
    assert result.duration < 5 + SMALL["grace"] + 1
    kept = len(result.stdout) + len(result.stderr)
    assert kept < 2 * SMALL["max_output_bytes"] + 1000
    assert "bytes omitted" in result.stdout + result.stderr


def test_11_head_and_tail_are_kept_until_the_deadline(sandbox):
    code = "for i in range(20000):\n    print(i)\nimport time\ntime.sleep(30)"
    result = sandbox.run(code, timeout=1)
    assert result.status == "timeout"
    assert result.stdout_truncated
    assert result.stdout.startswith("0\n1\n2\n")
    assert result.stdout.rstrip().endswith("19999")


# 12 ------------------------------------------------------------------------------------------
def test_12_daemons_that_ignore_sigterm_are_killed(sandbox):
    code = (
        "import os, signal, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "        time.sleep(1000)\n"
        "    os._exit(0)\n"
        "time.sleep(0.2)\n"
        "print('spawned')"
    )
    assert sandbox.run(code).stdout == "spawned\n"
    assert sandbox_pids(sandbox) == []
    zombies = sandbox.run(
        "import os\n[p for p in os.listdir('/proc') if p.isdigit() and ') Z ' in open(f'/proc/{p}/stat').read()]"
    )
    assert zombies.stdout == "[]\n"


def test_12_a_daemon_slow_to_die_is_gone_when_the_call_returns(make_sandbox):
    # A SIGKILLed process stays in /proc until it has freed its memory and been reaped; 512 MB
    # take about 0.1 s to free, which is how long a loaded machine can delay any dying process.
    # Like a real daemon it points its stdio at /dev/null (holding the call's output pipes, it
    # would make the server wait for its end while draining them).
    sandbox = make_sandbox(memory_mb=1024)
    code = (
        "import os, time\n"
        "ready_r, ready_w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        null = os.open(os.devnull, os.O_RDWR)\n"
        "        for fd in (0, 1, 2):\n"
        "            os.dup2(null, fd)\n"
        "        ballast = b'x' * (512 * 1024 * 1024)\n"
        "        os.write(ready_w, b'1')\n"
        "        time.sleep(1000)\n"
        "    os._exit(0)\n"
        "os.read(ready_r, 1)\n"
        "print('spawned')"
    )
    result = sandbox.run(code, timeout=20)
    assert result.stdout == "spawned\n", result.stderr
    assert not result.state_lost
    assert sandbox_pids(sandbox) == []


# 13 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code",
    [
        "import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe\\xc3 done\\n')",
        "print('\\x1b[31mred\\x1b[0m \\x1b]0;title\\x07 plain')",
        "print('progress\\r' * 100000 + 'final')",
        "import sys\nsys.stderr.buffer.write(bytes(range(256)) * 4)",
    ],
    ids=["invalid-utf8", "ansi", "carriage-returns", "all-bytes"],
)
def test_13_odd_bytes_are_decoded_and_flagged(sandbox, code):
    result = sandbox.run(code)
    assert result.status == "ok"
    assert result.sanitized
    text = result.stdout + result.stderr
    assert "\x1b" not in text and "\r" not in text and "\x00" not in text


# 14 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code,signal_number",
    [("import ctypes\nctypes.string_at(0)", 11), ("import os\nos.abort()", 6)],
    ids=["segfault", "abort"],
)
def test_14_interpreter_crash_is_an_error_and_replaced(sandbox, code, signal_number):
    sandbox.run("before = 1")
    result = sandbox.run(code, timeout=10)
    assert result.status == "error"
    assert result.exit_code == -signal_number
    assert result.state_lost
    assert "SIG" in result.stderr
    after = sandbox.run("print('before' in globals())")
    assert after.status == "ok" and after.stdout == "False\n"


def test_14_deep_recursion_is_an_error(sandbox):
    code = "import sys\nsys.setrecursionlimit(10 ** 7)\ndef f(n):\n    return f(n + 1)\nf(0)"
    result = sandbox.run(code, timeout=10)
    # Either Python stops it (RecursionError, MemoryError) or the C stack overflows (SIGSEGV).
    assert result.status in ("error", "oom")
    assert result.exit_code == 1 or result.exit_code == -11
    assert sandbox.run("print('next')").stdout == "next\n"


# 15 ------------------------------------------------------------------------------------------
def test_15_result_files_are_read_inside_the_sandbox(sandbox, tmp_path):
    host_secret = tmp_path / f"agentrl-host-secret-{uuid.uuid4().hex}"
    host_secret.write_text("host secret")
    sandbox.run(
        f"import os\nos.symlink({str(host_secret)!r}, 'result.txt')\nos.symlink('/etc/shadow', 'shadow.txt')"
    )
    for name in ("result.txt", "shadow.txt"):
        with pytest.raises(SandboxError):
            sandbox.read_file(name)
    sandbox.write_file("answer.txt", "42")
    assert sandbox.read_file("answer.txt") == b"42"


# 16 ------------------------------------------------------------------------------------------
def test_16_huge_program_is_rejected_before_the_sandbox(sandbox):
    result = sandbox.run("x = 1\n" * 100_000)
    assert result.status == "error"
    assert result.stderr.startswith("rejected:")
    assert result.duration < 0.1
    assert sandbox.run("print('x' in globals())").stdout == "False\n"


def test_16_deep_nesting_is_an_error_not_a_crash(sandbox):
    for code in ("(" * 50_000 + ")" * 50_000, "[" * 5000 + "]" * 5000, "x = " + "-" * 60_000 + "1"):
        result = sandbox.run(code)
        # The parser refuses (SyntaxError, RecursionError or MemoryError); the interpreter lives.
        assert result.status in ("error", "oom", "ok")
        assert not result.state_lost


def test_16_wrong_argument_types_raise(sandbox):
    with pytest.raises(TypeError):
        sandbox.run(b"print(1)")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sandbox.run("print(1)", timeout=0)


# 17 ------------------------------------------------------------------------------------------
def test_17_two_sandboxes_are_independent(make_sandbox):
    a, b = make_sandbox(), make_sandbox()
    code = (
        "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('127.0.0.1', 8000))\ns.listen()\n"
        "open('/tmp/same.txt', 'w').write(NAME)\n"
    )
    assert a.run(code.replace("NAME", "'a'")).ok
    assert b.run(code.replace("NAME", "'b'")).ok
    assert a.run("print(open('/tmp/same.txt').read())").stdout == "a\n"
    assert b.run("print(open('/tmp/same.txt').read())").stdout == "b\n"


# 18 ------------------------------------------------------------------------------------------
def test_18_obfuscation_changes_nothing(sandbox):
    hidden = base64.b64encode(b"print(open('/etc/shadow').read())").decode()
    for code in (
        "__import__('o' + 's').system('cat /etc/shadow && echo LEAKED')",
        f"import base64\nexec(base64.b64decode({hidden!r}))",
        "getattr(__builtins__, 'op' + 'en')('/etc/shadow').read()",
    ):
        result = sandbox.run(code)
        assert "root:" not in result.stdout and "LEAKED" not in result.stdout
