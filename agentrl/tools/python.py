"""The `python` tool: a stateful Python interpreter in a sandbox.

    tool = PythonTool()                     # its own sandbox (agentrl.sandboxes.create), started on first call
    tool = PythonTool(pool=SandboxPool(8))  # or checked out of a warm pool

Variables, imports and files persist between calls of one episode, as in a notebook; the value
of a trailing expression is printed. `reset()` gives the sandbox back (the next episode starts
clean), `fork()` forks the sandbox (a branch continues from a copy of the interpreter state),
`close()` releases it.

What the model sees is stdout, then stderr (a traceback), cut to `max_output_chars` with a
visible marker. A failing program is a result with status `error`, a slow one `timeout`.
When the sandbox itself fails (`sandbox_error`: it would not start, or died under us), the call
is retried in a fresh sandbox with backoff; the model is told that earlier state is gone.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pydantic

from agentrl.tools.base import Tool, ToolResult, ToolStatus, truncate
from agentrl.tools.retry import InfraError, RetriesExhausted, RetryPolicy, with_retries

STATE_LOST_NOTE = "[The interpreter was restarted: earlier variables and imports are gone.]"


class PythonArgs(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    code: str = pydantic.Field(min_length=1, max_length=100_000, description="Python code to run.")


class PythonTool(Tool):
    """Run Python code in a persistent sandboxed interpreter."""

    name = "python"
    description = "Run Python code; variables persist between calls. Print what you need to see."
    Args = PythonArgs
    primary_arg = "code"
    stateful = True

    def __init__(
        self,
        pool: Any = None,
        *,
        backend: str = "auto",
        timeout: float = 10.0,
        max_output_chars: int = 2000,
        retry: RetryPolicy = RetryPolicy(attempts=3, base_delay=0.5),
        **limits: Any,
    ) -> None:
        """Args:
            pool: an `agentrl.sandboxes.SandboxPool` to check sandboxes out of; None creates one
                sandbox per tool with `agentrl.sandboxes.create(backend, **limits)`.
            timeout: wall-clock seconds per call.
            max_output_chars: output shown to the model is cut to this (with a marker).
            limits: sandbox limits (`memory_mb`, `pids`, ...) when no pool is given.
        """
        self.pool = pool
        self.backend = backend
        self.timeout = timeout
        self.max_output_chars = max_output_chars
        self.retry = retry
        self.limits = limits
        self.sandbox: Any = None
        self._state_lost = False

    # --- sandbox life cycle ---------------------------------------------------------------------

    def _ensure_sandbox(self) -> Any:
        if self.sandbox is None:
            from agentrl.sandboxes import SandboxError, create

            try:
                if self.pool is not None:
                    self.sandbox = self.pool.acquire(timeout=60)
                else:
                    self.sandbox = create(self.backend, timeout=self.timeout, **self.limits)
            except (SandboxError, TimeoutError) as exc:
                raise InfraError(f"no sandbox: {exc}") from exc
        return self.sandbox

    def _release(self) -> None:
        sandbox, self.sandbox = self.sandbox, None
        if sandbox is not None:
            if self.pool is not None:
                self.pool.release(sandbox)
            else:
                sandbox.close()

    def reset(self) -> None:
        self._release()
        self._state_lost = False

    def close(self) -> None:
        self._release()

    def fork(self, memo: dict[int, Any] | None = None) -> "PythonTool":
        twin = PythonTool(self.pool, backend=self.backend, timeout=self.timeout,
                          max_output_chars=self.max_output_chars, retry=self.retry, **self.limits)
        if self.sandbox is not None:
            from agentrl.sandboxes import SandboxError

            try:
                twin.sandbox = self.sandbox.fork()
                # A state that cannot be copied (an open file, a running thread) is replayed:
                # the parent's calls ran again. Said here so rollouts can count such branches.
                twin.fork_exact, twin.fork_note = twin.sandbox.fork_exact, twin.sandbox.fork_note
            except SandboxError:
                # The interpreter died since the last call (the fork found it so): the next call
                # runs in a fresh one, and the model must be told its variables are gone.
                self._state_lost = True
                raise
        return twin

    # --- calls ----------------------------------------------------------------------------------

    def _run_once(self, code: str) -> Any:
        """One attempt; a sandbox failure discards the sandbox and raises InfraError to retry."""
        had_state = self.sandbox is not None
        sandbox = self._ensure_sandbox()
        try:
            result = sandbox.run(code, timeout=self.timeout)
        except Exception as exc:  # the sandbox was closed or broke the protocol
            result = None
            error = f"{type(exc).__name__}: {exc}"
        else:
            error = result.stderr
        if result is None or result.status == "sandbox_error":
            self._release()
            self._state_lost = self._state_lost or had_state
            raise InfraError(f"sandbox failed: {error.strip()[:300]}")
        return result

    async def call(self, args: PythonArgs) -> ToolResult:
        try:
            result, retries = await with_retries(lambda: asyncio.to_thread(self._run_once, args.code), self.retry)
        except RetriesExhausted as exc:
            return ToolResult(
                "Error: the Python sandbox is unavailable right now.", ToolStatus.INFRA_ERROR,
                {"error": str(exc.last)}, infra_retries=exc.retries,
            )
        text, status = self._render(result)
        if self._state_lost or result.state_lost:
            text = f"{text}\n{STATE_LOST_NOTE}"
            self._state_lost = False
        data = {"status": result.status, "exit_code": result.exit_code, "duration": result.duration,
                "truncated": result.truncated}
        return ToolResult(text, status, data, infra_retries=retries)

    def _render(self, result: Any) -> tuple[str, ToolStatus]:
        output = result.stdout
        if result.stderr:
            output = f"{output}\n{result.stderr}" if output else result.stderr
        output, _ = truncate(output.rstrip("\n"), self.max_output_chars)
        if result.status == "ok":
            return output or "(no output)", ToolStatus.OK
        if result.status == "timeout":  # stderr only repeats the deadline; say it once
            output, _ = truncate(result.stdout.rstrip("\n"), self.max_output_chars)
            return f"{output}\nError: the code ran past the {self.timeout:g} s time limit.".lstrip(), ToolStatus.TIMEOUT
        if result.status == "oom":
            return f"{output}\nError: the code ran out of memory.".lstrip(), ToolStatus.ERROR
        if result.status == "output_limit":
            return f"{output}\nError: the code printed too much and was stopped.".lstrip(), ToolStatus.ERROR
        return output or f"Error: exit code {result.exit_code}.", ToolStatus.ERROR
