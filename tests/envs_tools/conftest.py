from __future__ import annotations

import pytest


@pytest.fixture
def sandbox_backend(sandbox_missing) -> str:
    """The sandbox backend `auto` resolves to here; skips the test when there is none."""
    from agentrl.sandboxes import resolve_backend

    try:
        return resolve_backend("auto")
    except Exception as exc:  # SandboxUnavailable, or a docker daemon that stopped answering
        sandbox_missing(f"there is no sandbox backend: {type(exc).__name__}: {exc}")
