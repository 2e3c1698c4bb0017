"""The allocator setting every run applies (agentrl.training.heap)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from agentrl.config import Config


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_retain_freed_memory_is_accepted_by_glibc():
    # In a child process: the setting lasts for the life of the process that applies it.
    code = "from agentrl.training.heap import retain_freed_memory; print(retain_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "True"


def test_runs_retain_freed_memory_by_default_and_can_opt_out():
    assert Config().run.retain_freed_memory is True
    assert Config.model_validate({"run": {"retain_freed_memory": False}}).run.retain_freed_memory is False
