"""The python tool on a real sandbox (bwrap and docker, each skipped where unavailable)."""

from __future__ import annotations

import asyncio

import pytest

from agentrl.tools.base import ToolStatus
from agentrl.tools.python import STATE_LOST_NOTE, PythonArgs, PythonTool


def _backend_ready(name: str) -> tuple[bool, str]:
    from agentrl.sandboxes.backends import bwrap_ready, docker_ready

    try:
        return {"bwrap": bwrap_ready, "docker": docker_ready}[name]()
    except Exception as exc:  # a half-installed backend is "not available" here
        return False, str(exc)


@pytest.fixture(params=[pytest.param("bwrap", marks=pytest.mark.bwrap),
                        pytest.param("docker", marks=pytest.mark.docker)])
def tool(request, sandbox_missing):
    ready, why = _backend_ready(request.param)
    if not ready:
        sandbox_missing(f"the {request.param} sandbox is unavailable: {why}")
    tool = PythonTool(backend=request.param, timeout=2.0, max_output_chars=200)
    yield tool
    tool.close()


def _run(tool, code):
    return asyncio.run(tool.call(PythonArgs(code=code)))


def test_state_persists_and_errors_are_results(tool):
    assert _run(tool, "x = 6 * 7").text == "(no output)"
    assert _run(tool, "print(x)").text == "42"
    error = _run(tool, "1 / 0")
    assert error.status is ToolStatus.ERROR and error.text.endswith("ZeroDivisionError: division by zero")
    assert _run(tool, "x + 1").text == "43"  # a trailing expression is shown, like a notebook


def test_timeout_and_truncated_output(tool):
    slow = _run(tool, "import time\nprint('started', flush=True)\ntime.sleep(10)")
    assert slow.status is ToolStatus.TIMEOUT
    assert slow.text.endswith("Error: the code ran past the 2 s time limit.")
    long = _run(tool, "print('a' * 1000)")
    assert long.ok and "[... 800 more characters truncated]" in long.text and len(long.text) < 260


def test_fork_copies_interpreter_state_and_reset_clears_it(tool):
    _run(tool, "items = [1, 2]")
    branch = tool.fork()
    try:
        _run(branch, "items.append(3)")
        assert _run(branch, "print(items)").text == "[1, 2, 3]"
        assert _run(tool, "print(items)").text == "[1, 2]"
    finally:
        branch.close()
    tool.reset()
    assert "NameError" in _run(tool, "items").text


def test_crashed_sandbox_is_replaced_and_the_model_is_told(tool):
    _run(tool, "y = 1")
    tool.sandbox.close()  # the sandbox disappears under the tool (a crash, a killed container)
    result = _run(tool, "print('alive')")
    assert result.ok and result.infra_retries == 1
    assert result.text == f"alive\n{STATE_LOST_NOTE}"
