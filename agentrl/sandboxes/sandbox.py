"""The `Sandbox` base class: one isolated, stateful Python interpreter.

A backend (docker, bwrap) only knows how to launch the REPL server inside its isolation
boundary, how to kill everything it launched, and how to tell why the server died. This class
does the rest, the same way for every backend: the call protocol, the host-side deadline,
turning every outcome into an `ExecResult`, restarting a dead interpreter on the next call, and
`fork()`.

Fork design (measured in docs/sandboxes.md, "Forks"): a fork is a fresh sandbox of the same
backend and limits (a warm one from the pool when there is one) into which the parent's
interpreter state is *copied*: the parent's server pickles its namespace, its random and decimal
state and the files of its writable dirs (`state_transfer`), the host relays the bytes without
reading them, and the child's server loads them. So a number the parent drew, a clock it read,
a file it wrote are the same in the branch (`fork_exact` True). What cannot be copied (an open
file, a generator, a running thread, ...) makes the fork *replay* the parent's calls in the fresh
sandbox instead, which is exact only for deterministic cells: `fork_exact` is then False and
`fork_note` says why. Forking the server process inside the parent's container or namespaces
would be exact and faster, but the two branches would share their files, process table and
memory bound (one could read or kill the other), and a process cannot be moved into another
sandbox's namespaces afterwards; isolation comes first.
"""

from __future__ import annotations

import abc
import asyncio
import atexit
import concurrent.futures
import dataclasses
import hashlib
import json
import signal
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from agentrl.sandboxes.errors import SandboxClosedError, SandboxError, SandboxStartError
from agentrl.sandboxes.limits import Limits
from agentrl.sandboxes.metrics import SandboxMetrics
from agentrl.sandboxes.result import STATUSES, ExecResult, decode_output
from agentrl.sandboxes.transport import Channel, ChannelClosed, ChannelTimeout, ProtocolError

SERVER_SOURCE = (Path(__file__).with_name("repl_server.py")).read_text()
# Handed to the server in its config; it copies and restores interpreter state for `fork()`.
# The config travels as one command-line argument, which Linux caps at 128 KiB.
STATE_TRANSFER_SOURCE = (Path(__file__).with_name("state_transfer.py")).read_text()
WORKDIR = "/workspace"
# Imported by every server at start (a few ms, hidden by a warm pool), so loading a fork's copy
# need not import them; the ones agent code imports most, without heavy dependencies.
PRELOADED_MODULES = (
    "math", "random", "bisect", "heapq", "string", "itertools", "functools", "collections",
    "re", "json", "datetime", "fractions", "decimal", "statistics",
)
# The sandbox's writable dirs: their files are part of the state a fork copies.
STATE_ROOTS = (WORKDIR, "/tmp", "/dev/shm")
_MIB = 1024 * 1024
# Variables the sandboxed program sees; nothing of the host environment is passed through.
SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": WORKDIR,
    "LANG": "C.UTF-8",
    "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONIOENCODING": "utf-8",
}

_LIVE: weakref.WeakSet[Sandbox] = weakref.WeakSet()


class _CopyRejected(Exception):
    """The fork's sandbox could not load the parent's state (the fork replays instead)."""


class _NoAnswer(SandboxError):
    """The interpreter did not answer a request (it died or hung; it was stopped)."""


_EXECUTOR: concurrent.futures.ThreadPoolExecutor | None = None
_EXECUTOR_LOCK = threading.Lock()


@dataclass(frozen=True)
class _Call:
    """One state-changing call, kept so that `fork()` can replay it."""

    op: str
    data: bytes
    timeout: float
    path: str
    digest: str


@dataclass(frozen=True)
class _Snapshot:
    """One copy of a parent's state, shared by the forks that are taken of it at once."""

    history: list[_Call]
    running: bool
    blob: bytes | None
    why: str


def _digest(result: ExecResult) -> str:
    text = json.dumps([result.status, result.stdout, result.stderr, result.exit_code])
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class Sandbox(abc.ABC):
    """A started, stateful interpreter inside an isolation boundary.

    Use `agentrl.sandboxes.create()` rather than a backend class. A sandbox serves one call at
    a time (calls from several threads are serialized); it is a context manager that closes
    itself.
    """

    backend: str = ""

    def __init__(self, limits: Limits | None = None, *, metrics: SandboxMetrics | None = None):
        self.limits = limits or Limits()
        self.metrics = metrics
        # For a sandbox made by `fork()`: whether its state is exactly its parent's, and if
        # not, why (what could not be copied, or what differs).
        self.fork_exact = True
        self.fork_note = ""
        # Set by a pool: returns a started sandbox of the same configuration for `fork()`.
        self.fork_source: Callable[[], Sandbox] | None = None
        # Set by a pool: told once when this sandbox is closed, so the pool can refill.
        self.on_close: Callable[[Sandbox], None] | None = None
        self._lock = threading.RLock()
        self._channel: Channel | None = None
        self._history: list[_Call] = []
        self._closed = False
        self._ever_started = False
        # Forks of this sandbox under way, and the snapshot they share: forks taken at once
        # (a branching round) copy the state once. Any call drops it (see `_state_changes`).
        self._forks_in_flight = 0
        self._shared_snapshot: _Snapshot | None = None
        # Why the interpreter's state is gone, when a fork (not a call) found it dead: every
        # fork raises this until a new interpreter starts, so none copies the empty one instead.
        self._lost: str | None = None

    # ---- backend hooks -----------------------------------------------------------------------

    @abc.abstractmethod
    def _launch(self, config: dict[str, Any]) -> Channel:
        """Start the REPL server with `config` (JSON-able) and return its channel."""

    @abc.abstractmethod
    def _kill(self) -> None:
        """Kill everything this sandbox launched. Idempotent; never raises."""

    @abc.abstractmethod
    def _death(self) -> tuple[int | None, bool]:
        """After the channel closed: (exit code, negative for a signal; whether OOM-killed)."""

    def _lost_interpreter(self) -> tuple[str, int | None, bool]:
        """After the channel closed: discard the dead interpreter and say how it ended, as
        (words after "the interpreter", exit code, whether OOM-killed)."""
        exit_code, oom = self._death()
        self._discard()
        if oom:
            how = "was killed for using more than its memory limit"
        elif exit_code is not None and exit_code < 0:
            how = f"was killed ({_signal_name(-exit_code)})"
        else:
            how = f"exited (code {exit_code})"
        return how, exit_code, oom

    @abc.abstractmethod
    def _spawn(self) -> Sandbox:
        """A new, unstarted sandbox with the same backend settings and limits."""

    def _server_config(self) -> dict[str, Any]:
        """What the REPL server is told at start; backends add rlimits and process rules."""
        return {
            "max_output_bytes": self.limits.max_output_bytes,
            "output_limit_bytes": self.limits.output_limit_bytes,
            "workdir": WORKDIR,
            "nice": 10,
            "rlimits": {"RLIMIT_CORE": 0},
            "state_transfer": STATE_TRANSFER_SOURCE,
            "state_roots": list(STATE_ROOTS),
            "preload": list(PRELOADED_MODULES),
        }

    # ---- life cycle --------------------------------------------------------------------------

    def start(self) -> Sandbox:
        """Launch the interpreter and wait until it answers. Raises SandboxStartError."""
        with self._lock:
            self._check_open()
            if self._channel is None:
                self._launch_and_ping()
        return self

    def _launch_and_ping(self) -> None:
        began = time.monotonic()
        try:
            self._channel = self._launch(self._server_config())
            answer, _ = self._channel.request(
                {"op": "ping"}, b"", began + self.limits.start_timeout, 0
            )
            if not answer.get("ok"):
                raise ProtocolError(f"unexpected ping answer {answer!r}")
        except Exception as exc:
            self._discard()
            if isinstance(exc, SandboxStartError):
                raise
            raise SandboxStartError(
                f"the {self.backend} sandbox did not start: {type(exc).__name__}: {exc}"
            ) from exc
        _LIVE.add(self)
        self._lost = None
        if self.metrics is not None:
            self.metrics.count("restarts" if self._ever_started else "starts")
        self._ever_started = True

    def _state_changes(self) -> None:
        """Called before anything that may change the interpreter state: a snapshot shared by
        forks under way no longer holds it."""
        self._shared_snapshot = None

    def _discard(self) -> None:
        """Kill the interpreter and forget its state; the next call launches a new one."""
        channel, self._channel = self._channel, None
        self._state_changes()
        self._history.clear()
        self._kill()
        if channel is not None:
            channel.close()

    def close(self) -> None:
        """Kill the sandbox and free everything it holds. Idempotent and thread-safe."""
        first = not self._closed
        self._closed = True
        self._discard()
        _LIVE.discard(self)
        if first and self.on_close is not None:
            self.on_close(self)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def alive(self) -> bool:
        """Whether an interpreter is running (False after a crash until the next call)."""
        return self._channel is not None and not self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxClosedError(f"this {self.backend} sandbox was closed; create a new one")

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- calls -------------------------------------------------------------------------------

    def run(self, code: str, timeout: float | None = None) -> ExecResult:
        """Run `code` in the interpreter and return what happened; never raises for anything
        the code does. The value of a trailing expression is printed, as in a notebook.

        Args:
            code: Python source.
            timeout: wall-clock seconds for this call (default `limits.timeout`).
        """
        result = self._run(code, timeout, record=True)
        if self.metrics is not None:
            self.metrics.record_call(result)
        return result

    async def arun(self, code: str, timeout: float | None = None) -> ExecResult:
        """`run` for async callers: the call waits in a worker thread, not on the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_executor(), self.run, code, timeout)

    def ping(self, timeout: float = 5.0) -> bool:
        """Health check: whether the interpreter answers within `timeout` seconds."""
        with self._lock:
            if self._channel is None or self._closed:
                return False
            try:
                answer, _ = self._channel.request(
                    {"op": "ping"}, b"", time.monotonic() + timeout, 0
                )
                return bool(answer.get("ok"))
            except (ChannelClosed, ChannelTimeout, ProtocolError):
                self._discard()
                return False

    def _run(self, code: str, timeout: float | None, record: bool) -> ExecResult:
        if not isinstance(code, str):
            raise TypeError(f"code must be str, not {type(code).__name__}")
        timeout = self.limits.timeout if timeout is None else float(timeout)
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        began = time.monotonic()
        data = code.encode("utf-8", errors="replace")
        if len(data) > self.limits.max_code_bytes:
            message = (
                f"rejected: the program is {len(data)} bytes, more than the "
                f"{self.limits.max_code_bytes} bytes a sandbox accepts; send smaller cells\n"
            )
            return ExecResult("error", "", message, None, time.monotonic() - began)
        with self._lock:
            self._check_open()
            return self._run_locked(data, timeout, began, record)

    def _run_locked(self, data: bytes, timeout: float, began: float, record: bool) -> ExecResult:
        def finish(status: str, stderr: str, exit_code: int | None, **flags: bool) -> ExecResult:
            return ExecResult(status, "", stderr, exit_code, time.monotonic() - began, **flags)  # type: ignore[arg-type]

        self._state_changes()
        if self._channel is None:
            try:
                self._launch_and_ping()
            except SandboxStartError as exc:
                return finish("sandbox_error", f"[sandbox] {exc}\n", None)
        assert self._channel is not None
        deadline = time.monotonic() + timeout + self.limits.grace
        max_payload = 2 * self.limits.max_output_bytes + 1024
        try:
            header, payload = self._channel.request(
                {"op": "run", "timeout": timeout}, data, deadline, max_payload
            )
            result = self._parse(header, payload, began)
        except ChannelTimeout:
            self._discard()
            return finish(
                "timeout",
                f"TimeoutError: the call ran past its {timeout:g} s deadline and did not stop; "
                "the interpreter was killed and the next call starts a fresh one "
                "(earlier variables and files are gone)\n",
                None,
                state_lost=True,
            )
        except ChannelClosed:
            how, exit_code, oom = self._lost_interpreter()
            return finish(
                "oom" if oom else "error",
                f"[sandbox] the interpreter {how}; the next call starts a fresh one "
                "(earlier variables and files are gone)\n",
                exit_code,
                state_lost=True,
            )
        except ProtocolError as exc:
            self._discard()
            return finish("sandbox_error", f"[sandbox] protocol error: {exc}\n", None, state_lost=True)
        leftover = header["leftover_processes"]
        if leftover:
            # The server could not make the call's processes go within its bound: they must not
            # meet the next call, so the whole sandbox goes with them.
            self._discard()
            note = (
                f"[sandbox] {leftover} process(es) started by the call were still running after "
                "it ended; the sandbox was replaced (earlier variables and files are gone)\n"
            )
            return dataclasses.replace(
                result, stderr=result.stderr + note, duration=time.monotonic() - began, state_lost=True
            )
        if record:
            self._history.append(_Call("run", data, timeout, "", _digest(result)))
        return result

    @staticmethod
    def _parse(header: dict[str, Any], payload: bytes, began: float) -> ExecResult:
        """Turn an answer frame into an ExecResult, trusting none of its fields."""
        status = header.get("status")
        exit_code = header.get("exit_code")
        stdout_len = header.get("stdout_len")
        leftover = header.get("leftover_processes")
        if (
            status not in STATUSES
            or status == "sandbox_error"
            or not (exit_code is None or type(exit_code) is int)
            or type(stdout_len) is not int
            or not 0 <= stdout_len <= len(payload)
            or type(leftover) is not int
            or leftover < 0
        ):
            raise ProtocolError(f"malformed result header {str(header)[:200]}")
        stdout, dirty_out = decode_output(payload[:stdout_len])
        stderr, dirty_err = decode_output(payload[stdout_len:])
        return ExecResult(
            status=status,
            stdout=stdout,
            stderr=stderr,
            exit_code=exit_code,
            duration=time.monotonic() - began,
            stdout_truncated=bool(header.get("stdout_truncated")),
            stderr_truncated=bool(header.get("stderr_truncated")),
            sanitized=dirty_out or dirty_err,
        )

    # ---- files -------------------------------------------------------------------------------

    def read_file(self, path: str, max_bytes: int = 1 << 20, timeout: float = 5.0) -> bytes:
        """Read a file as the sandboxed program sees it (paths and symlinks resolve inside the
        sandbox, never on the host). Raises SandboxError if it cannot be read."""
        _, payload = self._file_op(
            {"op": "read_file", "path": path, "max_bytes": max_bytes}, b"", timeout, max_bytes
        )
        return payload

    def write_file(self, path: str, data: bytes | str, timeout: float = 5.0) -> None:
        """Create or replace a file inside the sandbox (relative paths are in its work dir)."""
        raw = data.encode() if isinstance(data, str) else bytes(data)
        if len(raw) > self.limits.max_code_bytes:
            raise SandboxError(
                f"{len(raw)} bytes is more than the {self.limits.max_code_bytes} bytes a sandbox accepts"
            )
        self._file_op({"op": "write_file", "path": path}, raw, timeout, 0)
        with self._lock:
            self._history.append(_Call("write_file", raw, timeout, path, ""))

    def _file_op(
        self, header: dict[str, Any], payload: bytes, timeout: float, max_payload: int
    ) -> tuple[dict[str, Any], bytes]:
        with self._lock:
            self._check_open()
            if header["op"] != "read_file":
                self._state_changes()
            if self._channel is None:
                self._launch_and_ping()
            assert self._channel is not None
            try:
                answer, data = self._channel.request(
                    header, payload, time.monotonic() + timeout, max_payload
                )
            except (ChannelClosed, ChannelTimeout, ProtocolError) as exc:
                self._discard()
                raise _NoAnswer(f"{header['op']} failed: the sandbox did not answer ({exc!r})") from None
        if "error" in answer:
            raise SandboxError(f"{header['op']} {header.get('path')!r}: {answer['error']}")
        return answer, data

    # ---- fork --------------------------------------------------------------------------------

    def fork(self) -> Sandbox:
        """A new, independent sandbox holding this one's interpreter state.

        The state is copied into a fresh sandbox (a warm one from the pool this sandbox came
        from, if any): variables, functions and classes defined in cells, imported modules,
        random's and decimal's state, the current dir, the environment, and the files of the work
        dir, /tmp and /dev/shm. `fork_exact` on the result is True when the copy equals this
        sandbox's state. When something cannot be copied (an open file, a generator, a thread
        still running, ...), the fork replays this sandbox's calls instead: `fork_exact` is False
        and `fork_note` names what could not be copied. A sandbox whose interpreter was lost (a
        call reported `state_lost`) or never started forks into a fresh one.

        Forks taken at the same time (from several threads) copy the state once and share it.
        An infrastructure failure never makes a fork replay: a sandbox taken for the fork that
        dies before it loaded the copy is replaced by another one, once.

        Raises:
            SandboxClosedError: this sandbox was closed.
            SandboxError: its interpreter died since its last call (its state is gone, so the
                branch cannot be made; the next `run` starts a fresh interpreter), did not answer
                the copy request, or two sandboxes taken for the fork died in turn.

        The caller owns (and must close) the returned sandbox.
        """
        with self._lock:
            self._check_open()
            self._forks_in_flight += 1
        try:
            return self._fork_from(self._take_snapshot())
        finally:
            with self._lock:
                self._forks_in_flight -= 1
                if not self._forks_in_flight:
                    self._shared_snapshot = None  # host memory: kept only while forks share it

    def _take_snapshot(self) -> _Snapshot:
        """This sandbox's state for a fork: the snapshot of a fork under way if nothing ran
        since, else a new one."""
        with self._lock:
            self._check_open()
            if self._lost is not None:
                raise SandboxError(self._lost)
            shared = self._shared_snapshot
            if shared is not None:
                return shared
            running = self._channel is not None
            blob, why = self._snapshot() if running else (None, "")
            taken = _Snapshot(list(self._history), running, blob, why)
            if blob is not None:
                self._shared_snapshot = taken
            return taken

    def _fork_from(self, snapshot: _Snapshot) -> Sandbox:
        """A new sandbox in `snapshot`'s state: the copy loaded, else the calls replayed."""
        if not snapshot.running:  # an empty state, the same as the fresh sandbox's
            return self._fork_target()
        why = snapshot.why
        if snapshot.blob is not None:
            try:
                child, differences = self._copy_into_new_sandbox(snapshot.blob)
            except _CopyRejected as exc:
                why = f"the new sandbox could not load the copy ({exc})"
            else:
                child._history = list(snapshot.history)
                child.fork_exact = not differences
                child.fork_note = "; ".join(differences)
                return child
        child = self._fork_target()
        try:
            differing = child._replay(snapshot.history)
        except BaseException:
            child.close()
            raise
        child.fork_exact = False
        child.fork_note = f"replayed {len(snapshot.history)} call(s) instead of copying the state: {why}"
        if differing:
            child.fork_note += f"; {differing} replayed call(s) printed something different"
        return child

    def _copy_into_new_sandbox(self, blob: bytes) -> tuple[Sandbox, list[str]]:
        """A sandbox for a fork holding the copy `blob`, and what differs from this one.

        A sandbox that dies before it answers (killed from outside while it waited in the pool,
        say) says nothing about the copy: another one is taken, once, and the fork stays exact.
        Raises _CopyRejected when a sandbox answered that it could not load the copy.
        """
        died = ""
        for _ in range(2):
            child = self._fork_target()
            try:
                return child, child._restore(blob)
            except _NoAnswer as exc:
                child.close()
                died = str(exc)
            except BaseException:
                child.close()
                raise
        raise SandboxError(
            f"cannot fork this {self.backend} sandbox: two sandboxes taken for the fork died in turn "
            f"before they loaded its state (the last: {died}); is the machine out of memory?"
        )

    def _fork_target(self) -> Sandbox:
        """A started sandbox with the same settings for a fork: from the pool, or a new one."""
        child = self.fork_source() if self.fork_source is not None else self._spawn().start()
        child.fork_source = self.fork_source
        return child

    def _snapshot(self) -> tuple[bytes | None, str]:
        """(the interpreter state as opaque bytes, "") or (None, why it cannot be copied).

        Called with the lock held and the interpreter running. The bytes are pickles made by
        sandboxed code: the host never loads them, it only hands them to the fork's server.
        """
        assert self._channel is not None
        timeout = self.limits.start_timeout
        # The state lives in the server's memory, so it cannot be larger than the memory bound.
        max_payload = self.limits.memory_mb * _MIB + 1024
        try:
            answer, blob = self._channel.request(
                {"op": "snapshot", "timeout": timeout}, b"", time.monotonic() + timeout + self.limits.grace, max_payload
            )
        except ChannelClosed:
            how = self._lost_interpreter()[0]
            self._lost = (
                f"cannot fork this {self.backend} sandbox: its interpreter {how} after its last call, "
                "so the state to copy is gone and no branch can be made from it; the next run() "
                "starts a fresh interpreter"
            )
            raise SandboxError(self._lost) from None
        except (ChannelTimeout, ProtocolError) as exc:
            self._discard()
            self._lost = (
                f"cannot fork this {self.backend} sandbox: its interpreter did not answer the request "
                f"for its state ({type(exc).__name__}: {exc}); it was stopped, and the next run() "
                "starts a fresh one"
            )
            raise SandboxError(self._lost) from None
        if answer.get("ok") is True:
            return blob, ""
        reasons = answer.get("untransferable")
        if isinstance(reasons, list) and reasons and all(isinstance(r, str) for r in reasons):
            return None, "; ".join(reasons)[:4000]
        return None, f"the sandbox answered the request for its state with {str(answer)[:300]}"

    def _restore(self, snapshot: bytes) -> list[str]:
        """Load a parent's snapshot into this (fresh) sandbox; return what differs from the
        parent (empty when the copy is exact). Raises _CopyRejected when it answered that it
        could not load it, _NoAnswer when it did not answer (this sandbox is then in an unknown
        state and must be closed)."""
        timeout = self.limits.start_timeout
        try:
            answer, _ = self._file_op({"op": "restore", "timeout": timeout}, snapshot,
                                      timeout + self.limits.grace, 0)
        except (SandboxClosedError, SandboxStartError, _NoAnswer):
            raise  # the sandbox, not the copy, failed
        except SandboxError as exc:  # an error answer: this copy cannot be loaded
            raise _CopyRejected(str(exc)[:500]) from None
        differences = answer.get("inexact")
        if answer.get("ok") is True and isinstance(differences, list):
            return [str(d) for d in differences]
        raise _CopyRejected(str(answer)[:500])

    def _replay(self, history: list[_Call]) -> int:
        """Run `history` (a parent's calls) again here; return how many printed something
        different from the original."""
        differing = 0
        for call in history:
            if call.op == "write_file":
                self.write_file(call.path, call.data, timeout=call.timeout)
                continue
            with self._lock:
                self._check_open()
                result = self._run_locked(call.data, call.timeout, time.monotonic(), True)
            if _digest(result) != call.digest:
                differing += 1
        return differing


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = concurrent.futures.ThreadPoolExecutor(
                max_workers=256, thread_name_prefix="agentrl-sandbox"
            )
        return _EXECUTOR


@atexit.register
def _close_all() -> None:
    """Close sandboxes still open when the host program exits (also after Ctrl-C)."""
    for sandbox in list(_LIVE):
        sandbox.close()
