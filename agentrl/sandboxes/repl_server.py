"""The REPL server that runs inside every sandbox.

Standard library only: this file is handed to the sandbox's own ``python3 -S -u -c`` as source
text and must not import anything of agentrl. It is started once per sandbox and keeps one
interpreter namespace alive between calls, so variables, imports and files in the work dir carry
over from call to call.

Protocol (host <-> server), on the server's original stdin/stdout, one frame per message:

    frame   = struct ">II" (header_len, payload_len) + header (UTF-8 JSON) + payload (bytes)
    request = {"op": "ping" | "run" | "read_file" | "write_file" | "snapshot" | "restore", ...}
    run     : header {"op": "run", "timeout": seconds}, payload = program text (UTF-8)
    result  : header {"status", "exit_code", "duration", "stdout_len", "stdout_total",
                      "stderr_total", "leftover_processes", ...},
              payload = stdout head+tail then stderr head+tail
    snapshot: header {"op": "snapshot", "timeout": seconds}; answer {"ok": true} with the
              interpreter state as payload, or {"untransferable": [reasons]} (see
              state_transfer, which the host passes as source text in the config)
    restore : header {"op": "restore", "timeout": seconds}, payload = a snapshot; answer
              {"ok": true, "inexact": [differences]} or {"error": reason}

Per call the server points fds 1 and 2 at fresh pipes drained by reader threads that keep only
the head and tail of each stream (so a flood costs bounded memory and never blocks the writer),
arms SIGALRM for the deadline, runs the cell, then kills every other process in the sandbox and
waits until they are gone, so nothing started by one call outlives it (processes that do not go
within a bound are reported as leftover, and the host replaces the sandbox). The host enforces
the same deadline plus a grace period from outside and kills the sandbox if this server does not
answer in time.
"""

import _ast as ast
import builtins
import collections
import json
import linecache
import os
import resource
import select
import signal
import struct
import sys
import threading
import time
import traceback

_FRAME = struct.Struct(">II")
_MAX_REQUEST_HEADER = 1 << 20
_CELL_PREFIX = "<cell "
_CAPTURE_THREAD = "agentrl-capture"
# At most this many reasons, of at most this many characters, in an answer header.
_MAX_REASONS = 10
_MAX_REASON_CHARS = 300
# How long a call's end waits for the processes it killed to leave /proc (then the host
# replaces the sandbox); dying takes milliseconds, more only on a loaded machine.
_CLEANUP_SECONDS = 1.0


class _Deadline(BaseException):
    """Raised in the cell when its deadline passes (BaseException so `except Exception` in the
    program does not swallow it)."""


class _OutputFlood(BaseException):
    """Raised in the cell when it printed more than the per-call output limit."""


class _Armed:
    """Whether the signal handlers may raise into the running cell."""

    value = False


def _on_alarm(signum, frame):
    if _Armed.value:
        _Armed.value = False
        raise _Deadline()


def _on_flood(signum, frame):
    if _Armed.value:
        _Armed.value = False
        raise _OutputFlood()


class _Capture:
    """Points one fd (1 or 2) at a pipe and drains it, keeping head and tail bytes."""

    def __init__(self, target_fd, keep, limit, on_flood):
        self.target_fd = target_fd
        self.head_cap = keep - keep // 2
        self.tail_cap = keep // 2
        self.limit = limit
        self.on_flood = on_flood
        self.head = bytearray()
        self.tail = collections.deque()
        self.tail_len = 0
        self.total = 0
        self.stop = False
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        self.read_fd = read_fd
        os.dup2(write_fd, target_fd)
        os.close(write_fd)
        self.thread = threading.Thread(target=self._drain, daemon=True, name=_CAPTURE_THREAD)
        self.thread.start()

    def _drain(self):
        flooded = False
        while not self.stop:
            ready, _, _ = select.select([self.read_fd], [], [], 0.05)
            if not ready:
                continue
            try:
                chunk = os.read(self.read_fd, 1 << 16)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not chunk:
                return
            self.total += len(chunk)
            room = self.head_cap - len(self.head)
            if room > 0:
                self.head += chunk[:room]
                chunk = chunk[room:]
            if chunk and self.tail_cap:
                self.tail.append(chunk)
                self.tail_len += len(chunk)
                while self.tail and self.tail_len - len(self.tail[0]) >= self.tail_cap:
                    self.tail_len -= len(self.tail.popleft())
            if self.total > self.limit and not flooded:
                flooded = True
                self.on_flood()

    def finish(self, devnull_fd):
        """Detach the fd from the pipe and return (kept bytes, total bytes, truncated)."""
        os.dup2(devnull_fd, self.target_fd)
        self.thread.join(0.5)
        self.stop = True
        self.thread.join(0.5)
        os.close(self.read_fd)
        tail = b"".join(self.tail)
        if self.tail_len > self.tail_cap:
            tail = tail[-self.tail_cap :] if self.tail_cap else b""
        kept = bytes(self.head) + tail
        truncated = self.total > len(kept)
        if truncated:
            omitted = self.total - len(kept)
            kept = bytes(self.head) + ("\n... [%d bytes omitted] ...\n" % omitted).encode() + tail
        return kept, self.total, truncated


class Server:
    def __init__(self, config, transfer=None):
        self.config = config
        # The state_transfer module (None when the host sent none: forks then replay).
        self.transfer = transfer
        self.state_roots = list(config.get("state_roots", ()))
        # The state roots that were empty at start, and whether no cell, file write or restore
        # has run since (then they still are, and restoring a fork's copy need not clear them).
        self.empty_roots = {root for root in self.state_roots if _is_empty_dir(root)}
        self.untouched = True
        self.cell_prefix = _CELL_PREFIX
        self.capture_thread_prefix = _CAPTURE_THREAD
        self.kill_others = bool(config.get("kill_others")) and os.getuid() != 0
        self.namespace = {"__name__": "__main__", "__builtins__": builtins}
        self.cells = 0
        self.pid = os.getpid()
        self.proto_in = os.dup(0)
        self.proto_out = os.dup(1)
        self.devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(self.devnull, fd)
        self.stdin, self.stdout, self.stderr = sys.stdin, sys.stdout, sys.stderr
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.signal(signal.SIGUSR2, _on_flood)
        self.main_ident = threading.main_thread().ident
        # What the server itself holds, so a snapshot can tell what the cells added.
        self.baseline_fds = {int(fd) for fd in os.listdir("/proc/self/fd") if _is_open(int(fd))}
        self.baseline_modules = set(sys.modules)

    # transport -------------------------------------------------------------------------------

    def _read_exact(self, n):
        chunks = []
        while n:
            chunk = os.read(self.proto_in, min(n, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def _send(self, header, payload=b""):
        body = json.dumps(header).encode()
        data = _FRAME.pack(len(body), len(payload)) + body + payload
        view = memoryview(data)
        while view:
            view = view[os.write(self.proto_out, view) :]

    def serve(self):
        while True:
            prefix = self._read_exact(_FRAME.size)
            if prefix is None:
                return
            header_len, payload_len = _FRAME.unpack(prefix)
            if header_len > _MAX_REQUEST_HEADER:
                return
            header = json.loads(self._read_exact(header_len) or b"{}")
            payload = self._read_exact(payload_len) if payload_len else b""
            op = header.get("op")
            try:
                if op == "ping":
                    self._send({"ok": True, "pid": os.getpid(), "cells": self.cells})
                elif op == "run":
                    self._send(*self.run(payload.decode("utf-8", "replace"), float(header["timeout"])))
                elif op == "read_file":
                    self._send(*self.read_file(header["path"], int(header["max_bytes"])))
                elif op == "write_file":
                    self._send(*self.write_file(header["path"], payload))
                elif op == "snapshot":
                    self._send(*self.snapshot(float(header["timeout"])))
                elif op == "restore":
                    self._send(*self.restore(payload, float(header["timeout"])))
                else:
                    self._send({"error": "unknown op %r" % (op,)})
            except Exception as exc:  # a server bug must not kill the sandbox silently
                self._send({"error": "server error: %s: %s" % (type(exc).__name__, exc)})

    # cells -----------------------------------------------------------------------------------

    def _flood(self):
        signal.pthread_kill(self.main_ident, signal.SIGUSR2)

    def _execute(self, code, filename):
        """Run one cell like a notebook: the value of a trailing expression is printed."""
        tree = compile(code, filename, "exec", ast.PyCF_ONLY_AST)
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, filename, "exec"), self.namespace)
        if last is not None:
            value = eval(compile(last, filename, "eval"), self.namespace)
            if value is not None:
                self.namespace["_"] = value
                print(repr(value))

    def run(self, code, timeout):
        self.untouched = False
        self.cells += 1
        filename = "%s%d>" % (_CELL_PREFIX, self.cells)
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        keep = int(self.config["max_output_bytes"])
        limit = int(self.config["output_limit_bytes"])
        out = _Capture(1, keep, limit, self._flood)
        err = _Capture(2, keep, limit, self._flood)
        status, exit_code = "ok", 0
        start = time.monotonic()
        try:
            signal.setitimer(signal.ITIMER_REAL, max(timeout, 0.001))
            _Armed.value = True
            try:
                self._execute(code, filename)
            finally:
                if os.getpid() != self.pid:
                    # A process forked by the cell must not go on to serve the protocol.
                    os._exit(0)
                _Armed.value = False
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _Deadline:
            status, exit_code = "timeout", None
            self._report("TimeoutError: the call ran past its %.3g s deadline\n" % timeout)
        except _OutputFlood:
            status, exit_code = "output_limit", None
            self._report("OutputLimitError: the call printed more than %d bytes\n" % limit)
        except SystemExit as exc:
            exit_code = self._exit_code(exc)
            status = "ok" if exit_code == 0 else "error"
        except MemoryError as exc:
            status, exit_code = "oom", 1
            self._report(self._format(exc))
        except BaseException as exc:
            status, exit_code = "error", 1
            self._report(self._format(exc))
        duration = time.monotonic() - start
        self._flush_and_restore()
        leftover = self._kill_others()
        stdout, stdout_total, stdout_trunc = out.finish(self.devnull)
        stderr, stderr_total, stderr_trunc = err.finish(self.devnull)
        header = {
            "status": status,
            "exit_code": exit_code,
            "duration": duration,
            "stdout_len": len(stdout),
            "stdout_total": stdout_total,
            "stderr_total": stderr_total,
            "stdout_truncated": stdout_trunc,
            "stderr_truncated": stderr_trunc,
            "leftover_processes": leftover,
        }
        return header, stdout + stderr

    def _report(self, text):
        try:
            os.write(2, text.encode("utf-8", "replace"))
        except OSError:
            pass

    @staticmethod
    def _exit_code(exc):
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        try:
            os.write(2, (str(code) + "\n").encode("utf-8", "replace"))
        except OSError:
            pass
        return 1

    @staticmethod
    def _format(exc):
        """A short traceback: only frames of the user's cells, at most the last ten."""
        tb = exc.__traceback__
        while tb is not None and not tb.tb_frame.f_code.co_filename.startswith(_CELL_PREFIX):
            tb = tb.tb_next
        try:
            lines = traceback.format_exception(type(exc), exc, tb, limit=-10)
        except BaseException:
            lines = ["%s: %s\n" % (type(exc).__name__, exc)]
        text = "".join(lines)
        if len(text) > 8000:
            text = text[:2000] + "\n...\n" + text[-6000:]
        return text

    def _flush_and_restore(self):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        sys.stdin, sys.stdout, sys.stderr = self.stdin, self.stdout, self.stderr

    def _kill_others(self):
        """Kill every process of this sandbox except this server (and the namespace's init), and
        wait until they have left /proc; return how many are still there after the bound.

        A SIGKILLed process is not gone at once: it still frees its memory, and then its parent
        (often the namespace's init) must reap it. On a loaded machine that takes a while, and
        the next call would see it. So the kill is repeated (a thread of the cell may still be
        starting processes) until none is left, for at most `_CLEANUP_SECONDS`; what is left
        then is reported, and the host replaces the sandbox.

        Only done when the backend says this server has its own pid namespace and runs as a
        non-root user, where kill(-1) cannot reach anything outside the sandbox.
        """
        if not self.kill_others:
            self._reap_children()
            return 0
        deadline = time.monotonic() + _CLEANUP_SECONDS
        while True:
            try:
                os.kill(-1, signal.SIGKILL)
            except OSError:
                pass  # ESRCH: there is no other process
            self._reap_children()
            left = self._other_pids()
            if not left or time.monotonic() >= deadline:
                return len(left)
            time.sleep(0.001)

    @staticmethod
    def _reap_children():
        """Collect this server's children that have exited, without waiting."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def _other_pids(self):
        """Processes of the sandbox besides this server and pid 1, zombies included."""
        return [
            entry for entry in os.listdir("/proc") if entry.isdigit() and int(entry) not in (1, self.pid)
        ]

    # state transfer (exact forks) -------------------------------------------------------------

    def _within(self, action, timeout):
        """Run `action()` under the same SIGALRM deadline as a cell (pickling runs user code:
        a __reduce__ or __setstate__ of the program's own classes)."""
        signal.setitimer(signal.ITIMER_REAL, max(timeout, 0.001))
        _Armed.value = True
        try:
            return action()
        finally:
            _Armed.value = False
            signal.setitimer(signal.ITIMER_REAL, 0)

    def snapshot(self, timeout):
        if self.transfer is None:
            return {"untransferable": ["this server was started without the state transfer code"]}, b""
        try:
            header, blob = self._within(lambda: self.transfer.snapshot(self), timeout)
        except _Deadline:
            return {"untransferable": ["copying the state took longer than %g s" % timeout]}, b""
        except BaseException as exc:  # MemoryError, or a __reduce__ of the program that raised
            return {"untransferable": ["copying the state failed: %s: %s" % (type(exc).__name__, exc)]}, b""
        if "untransferable" in header:
            header = {"untransferable": _bounded(header["untransferable"])}
        return header, blob

    def restore(self, blob, timeout):
        if self.transfer is None:
            return {"error": "this server was started without the state transfer code"}, b""
        try:
            header = self._within(lambda: self.transfer.restore(self, blob), timeout)
        except _Deadline:
            return {"error": "restoring the state took longer than %g s" % timeout}, b""
        except BaseException as exc:
            return {"error": _bounded(["%s: %s" % (type(exc).__name__, exc)])[0]}, b""
        return {"ok": True, "inexact": _bounded(header["inexact"])}, b""

    # files -----------------------------------------------------------------------------------

    def read_file(self, path, max_bytes):
        try:
            with open(path, "rb") as f:
                data = f.read(max_bytes + 1)
        except OSError as exc:
            return {"error": "%s: %s" % (type(exc).__name__, exc)}, b""
        return {"ok": True, "truncated": len(data) > max_bytes}, data[:max_bytes]

    def write_file(self, path, data):
        self.untouched = False
        try:
            with open(path, "wb") as f:
                f.write(data)
        except OSError as exc:
            return {"error": "%s: %s" % (type(exc).__name__, exc)}
        return {"ok": True}, b""


def _is_empty_dir(path):
    try:
        return not os.listdir(path)
    except OSError:  # missing, or not a directory
        return False


def _is_open(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False  # e.g. the descriptor of the /proc/self/fd listing, closed by now
    return True


def _bounded(reasons):
    """At most `_MAX_REASONS` reasons of bounded length (they travel in a JSON header)."""
    out = [r if len(r) <= _MAX_REASON_CHARS else r[: _MAX_REASON_CHARS - 3] + "..." for r in reasons]
    if len(out) > _MAX_REASONS:
        out = out[: _MAX_REASONS - 1] + ["... and %d more" % (len(out) - _MAX_REASONS + 1)]
    return out


def _load_state_transfer(source):
    """The state_transfer module from its source text (sent by the host), or None."""
    if not source:
        return None
    module = type(sys)("state_transfer")
    # Registered before it runs: pickle finds its reconstructors as state_transfer.<name>.
    sys.modules["state_transfer"] = module
    exec(compile(source, "state_transfer.py", "exec"), module.__dict__)
    return module


def _install_seccomp(program_hex):
    """Install a seccomp filter (classic BPF, built by the host) on this process and all it
    will start. Filters stack: this adds to whatever the container runtime installed."""
    import ctypes

    program = bytes.fromhex(program_hex)
    libc = ctypes.CDLL(None, use_errno=True)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0)
    if libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "cannot install the seccomp filter")


def _apply_limits(config):
    for name, value in config.get("rlimits", {}).items():
        limit = getattr(resource, name)
        resource.setrlimit(limit, (int(value), int(value)))
    try:
        os.nice(int(config.get("nice", 0)))
    except OSError:
        pass
    workdir = config.get("workdir")
    if workdir:
        os.chdir(workdir)


def _preload(names):
    """Import the standard modules cells use most, before the first request: a fork's server
    then has them already when it loads a copy (importing them there is most of what loading a
    small copy costs), and a cell's own import of them is free. A module that is missing is
    left out; cells that import it get the ImportError themselves."""
    for name in names:
        try:
            __import__(name)
        except ImportError:
            pass


def main():
    config = json.loads(sys.argv[1])
    if config.get("seccomp"):
        _install_seccomp(config["seccomp"])
    _apply_limits(config)
    sys.argv = [""]
    transfer = _load_state_transfer(config.pop("state_transfer", None))
    _preload(config.get("preload", ()))
    if transfer is not None:
        transfer.prepare()
    Server(config, transfer).serve()


if __name__ == "__main__":
    main()
