"""The outcome of one call into a sandbox, and how raw output bytes become safe text.

Every call returns an `ExecResult`; nothing the sandboxed program does raises out of
`Sandbox.run`. The status names what happened:

- ``ok``: the cell ran to the end (or called ``sys.exit(0)``).
- ``error``: the cell raised, exited non-zero, or crashed the interpreter (then ``exit_code`` is
  the negative signal number and ``state_lost`` is True).
- ``timeout``: the wall-clock deadline passed.
- ``oom``: the memory bound was hit (a ``MemoryError`` or the kernel's OOM killer).
- ``output_limit``: the cell printed more than ``Limits.output_limit_bytes`` and was stopped.
- ``sandbox_error``: the sandbox itself failed (could not start, broke the protocol, the docker
  daemon went away). This is an infrastructure error, not the program's fault; callers may retry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Status = Literal["ok", "error", "timeout", "oom", "output_limit", "sandbox_error"]
STATUSES: tuple[str, ...] = ("ok", "error", "timeout", "oom", "output_limit", "sandbox_error")


@dataclass(frozen=True)
class ExecResult:
    """What one call produced.

    Attributes:
        status: see the module docstring.
        stdout, stderr: decoded text; when a stream was longer than the per-stream cap, its head
            and tail are kept with a marker line between them.
        exit_code: 0 for ok, 1 for an exception, the ``sys.exit`` code, the negative signal
            number of a crash, or None when the call never finished (timeout, rejected, sandbox
            error).
        duration: wall-clock seconds as seen by the host, including transport.
        stdout_truncated, stderr_truncated: the stream was cut to its head and tail.
        sanitized: invalid UTF-8 was replaced or terminal control sequences were removed.
        state_lost: the interpreter was killed during this call (or replaced after it, when
            processes the call started would not go); the next call runs in a fresh
            interpreter without the variables, imports and files of earlier calls.
    """

    status: Status
    stdout: str
    stderr: str
    exit_code: int | None
    duration: float
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    sanitized: bool = False
    state_lost: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def truncated(self) -> bool:
        return self.stdout_truncated or self.stderr_truncated


# CSI sequences (colors, cursor moves), OSC sequences (window titles) and other 2-byte escapes.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]")
# C0 controls except tab and newline (carriage returns are handled separately), plus DEL.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def decode_output(raw: bytes) -> tuple[str, bool]:
    """Decode program output into text a model can read.

    Invalid UTF-8 becomes U+FFFD, escape sequences and control characters are removed, and a
    line rewritten with carriage returns (progress bars) keeps only what a terminal would show
    last. Returns the text and whether anything was changed beyond decoding valid UTF-8.
    """
    text = raw.decode("utf-8", errors="replace")
    changed = "\ufffd" in text and b"\xef\xbf\xbd" not in raw
    if "\x1b" in text:
        text, n = _ANSI.subn("", text)
        changed = changed or n > 0
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if "\r" in text:
            lines = []
            for line in text.split("\n"):
                if "\r" in line:
                    parts = [p for p in line.split("\r") if p]
                    line = parts[-1] if parts else ""
                    changed = True
                lines.append(line)
            text = "\n".join(lines)
    text, n = _CONTROL.subn("", text)
    return text, changed or n > 0


def join_head_tail(head: bytes, tail: bytes, total: int) -> bytes:
    """Join the kept head and tail of a stream of ``total`` bytes with a marker line."""
    omitted = total - len(head) - len(tail)
    if omitted <= 0:
        return head + tail
    return head + f"\n... [{omitted} bytes omitted] ...\n".encode() + tail
