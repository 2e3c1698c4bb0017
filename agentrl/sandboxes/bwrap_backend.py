"""The bwrap backend: the REPL server inside bubblewrap namespaces, bounded by rlimits.

Isolation, from the outside in:
- bubblewrap runs as a dedicated non-root uid when the host process is root (as root, the
  kernel ignores RLIMIT_NPROC and bubblewrap would have the host's privileges to drop);
- every namespace is new (user, pid, network with only loopback, ipc, uts, cgroup, mount) and
  creating further user namespaces is disabled;
- the file system is an empty tmpfs root with only the interpreter's directories bound
  read-only, a minimal /etc written for the sandbox, a private /proc and /dev, and size-capped
  tmpfs mounts for the work dir, /tmp and /dev/shm;
- bubblewrap itself starts with an empty environment (it stays in the sandbox as pid 1, whose
  /proc/1/environ the code can read), and the server's is rebuilt from an allowlist;
- a seccomp filter (see `seccomp`) denies ptrace, keyrings, mounts, namespaces, BPF, io_uring;
- rlimits bound memory (address space), processes, file size, open files and CPU time; the
  server applies them to itself before it reads any program, so every process inherits them;
- ``--die-with-parent`` kills the sandbox if the host process dies.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from agentrl.sandboxes.errors import SandboxStartError, SandboxUnavailable
from agentrl.sandboxes.limits import Limits
from agentrl.sandboxes.metrics import SandboxMetrics
from agentrl.sandboxes.sandbox import SANDBOX_ENV, SERVER_SOURCE, WORKDIR, Sandbox
from agentrl.sandboxes.seccomp import build_filter
from agentrl.sandboxes.transport import Channel, PipeChannel

SANDBOX_USER = "agentrl-sandbox"
INNER_UID = 1000
MIB = 1024 * 1024
_ETC_PASSWD = f"root:x:0:0::/:/bin/false\nsandbox:x:{INNER_UID}:{INNER_UID}::{WORKDIR}:/bin/false\n"
_ETC_GROUP = f"root:x:0:\nsandbox:x:{INNER_UID}:\n"
_ETC_HOSTS = "127.0.0.1 localhost sandbox\n::1 localhost\n"

# --die-with-parent ties bubblewrap to the *thread* that started it (PR_SET_PDEATHSIG), so all
# sandboxes are spawned from this one long-lived thread rather than from short-lived callers.
_SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentrl-bwrap")

FIX_BWRAP = "apt-get install -y bubblewrap   (or: bash scripts/setup_sandboxes.sh)"
FIX_USER = (
    f"useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "
    f"{SANDBOX_USER}   (or: bash scripts/setup_sandboxes.sh)"
)


def find_bwrap() -> str | None:
    """Path of the bwrap binary, or None."""
    return shutil.which("bwrap")


def find_python() -> str:
    """The real interpreter the sandbox runs (never a pyenv shim, which costs tens of ms).

    ``AGENTRL_SANDBOX_PYTHON`` wins; else the system ``/usr/bin/python3``; else this process's
    own base interpreter.
    """
    override = os.environ.get("AGENTRL_SANDBOX_PYTHON")
    if override:
        return os.path.realpath(override)
    if os.path.exists("/usr/bin/python3"):
        return os.path.realpath("/usr/bin/python3")
    base = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(base)


def sandbox_user() -> tuple[int, int] | None:
    """(uid, gid) to drop to before starting bubblewrap, or None when not running as root.

    Raises SandboxUnavailable when running as root without the dedicated user.
    """
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SANDBOX_USER)
    except KeyError:
        raise SandboxUnavailable(
            f"running as root, the bwrap backend needs the dedicated user {SANDBOX_USER!r}; "
            f"create it with: {FIX_USER}"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _binds_for(python: str) -> list[str]:
    """bwrap arguments that make `python` and its libraries visible, read-only."""
    args: list[str] = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    prefix = Path(python).resolve().parent.parent
    if not str(prefix).startswith("/usr"):
        args += ["--ro-bind", str(prefix), str(prefix)]
    return args


def _data_fd(content: bytes) -> int:
    """An anonymous in-memory file holding `content`, positioned at its start."""
    fd = os.memfd_create("agentrl-sandbox", 0)
    os.write(fd, content)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class BwrapSandbox(Sandbox):
    """A sandbox made of bubblewrap namespaces and rlimits (no daemon, no image needed)."""

    backend = "bwrap"

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        metrics: SandboxMetrics | None = None,
        python: str | None = None,
    ) -> None:
        super().__init__(limits, metrics=metrics)
        bwrap = find_bwrap()
        if bwrap is None:
            raise SandboxUnavailable(f"bubblewrap (bwrap) is not installed; install it with: {FIX_BWRAP}")
        self.bwrap = bwrap
        self.python = python or find_python()
        self.run_as = sandbox_user()
        self._process: subprocess.Popen[bytes] | None = None
        self._last_stderr = ""

    def _spawn(self) -> Sandbox:
        return BwrapSandbox(self.limits, metrics=self.metrics, python=self.python)

    def _server_config(self) -> dict[str, Any]:
        config = super()._server_config()
        limits = self.limits
        config["rlimits"].update(
            RLIMIT_AS=limits.memory_mb * MIB,
            RLIMIT_NPROC=limits.pids,
            RLIMIT_FSIZE=limits.disk_mb * MIB,
            RLIMIT_NOFILE=limits.open_files,
            RLIMIT_CPU=limits.cpu_seconds,
        )
        # Own pid namespace and a non-root uid: kill(-1) reaches only this sandbox.
        config["kill_others"] = True
        return config

    def _argv(self, config: dict[str, Any], fds: dict[str, int]) -> list[str]:
        limits = self.limits
        argv = [
            self.bwrap,
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--hostname", "sandbox",
            "--uid", str(INNER_UID),
            "--gid", str(INNER_UID),
            "--clearenv",
        ]
        for key, value in SANDBOX_ENV.items():
            argv += ["--setenv", key, value]
        argv += _binds_for(self.python)
        argv += [
            "--proc", "/proc",
            "--dev", "/dev",
            "--size", str(limits.tmp_mb * MIB), "--tmpfs", "/dev/shm",
            "--size", str(limits.tmp_mb * MIB), "--tmpfs", "/tmp",
            "--size", str(limits.disk_mb * MIB), "--tmpfs", WORKDIR,
            "--dir", "/etc",
            "--ro-bind-data", str(fds["passwd"]), "/etc/passwd",
            "--ro-bind-data", str(fds["group"]), "/etc/group",
            "--ro-bind-data", str(fds["hosts"]), "/etc/hosts",
            "--remount-ro", "/",
            "--chdir", WORKDIR,
        ]
        if "seccomp" in fds:
            argv += ["--seccomp", str(fds["seccomp"])]
        argv += [self.python, "-S", "-u", "-c", SERVER_SOURCE, json.dumps(config)]
        return argv

    def _launch(self, config: dict[str, Any]) -> Channel:
        fds = {
            "passwd": _data_fd(_ETC_PASSWD.encode()),
            "group": _data_fd(_ETC_GROUP.encode()),
            "hosts": _data_fd(_ETC_HOSTS.encode()),
        }
        program = build_filter()
        if program is not None:
            fds["seccomp"] = _data_fd(program)
        try:
            argv = self._argv(config, fds)
            user = dict(user=self.run_as[0], group=self.run_as[1], extra_groups=[]) if self.run_as else {}
            self._process = _SPAWNER.submit(
                subprocess.Popen,
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                # bubblewrap stays in the sandbox as its pid 1, and sandboxed code can read
                # /proc/1/environ: it gets no variable at all (--clearenv only empties the
                # environment of the command it starts; the server's comes from --setenv).
                env={},
                pass_fds=tuple(fds.values()),
                start_new_session=True,
                **user,
            ).result()
        except OSError as exc:
            raise SandboxStartError(f"cannot run {self.bwrap}: {exc}") from exc
        finally:
            for fd in fds.values():
                os.close(fd)
        assert self._process.stdin is not None and self._process.stdout is not None
        return PipeChannel(self._process.stdin, self._process.stdout)

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        if process.stderr is not None:
            # bubblewrap's own error messages (the server points its stderr elsewhere).
            try:
                os.set_blocking(process.stderr.fileno(), False)
                self._last_stderr = (process.stderr.read(4096) or b"").decode("utf-8", "replace")
            except (OSError, ValueError):
                pass
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def _death(self) -> tuple[int | None, bool]:
        process = self._process
        if process is None:
            return None, False
        try:
            code = process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return None, False
        # bubblewrap reports a child killed by signal N as exit status 128 + N.
        if code > 128:
            return -(code - 128), False
        return code, False

    def start(self) -> Sandbox:
        try:
            return super().start()
        except SandboxStartError as exc:
            detail = f"; bwrap said: {self._last_stderr.strip()}" if self._last_stderr.strip() else ""
            raise SandboxStartError(f"{exc}{detail}") from exc

