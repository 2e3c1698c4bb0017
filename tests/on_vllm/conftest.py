"""The vLLM tests run in `.venv-vllm` (vLLM's CPU build; `make vllm` builds it, `make test` runs
them there). In a Python without vLLM they skip with that reason, or fail under
`AGENTRL_REQUIRE_VLLM=1` (CI), where they must run."""

from __future__ import annotations

import importlib.util
import os
import socket

import pytest

HOW = "run them with `make vllm && .venv-vllm/bin/python -m pytest tests/on_vllm` (make test does)"


def pytest_collection_modifyitems(config, items):
    if importlib.util.find_spec("vllm") is not None:
        return
    reason = f"vLLM is not installed in this Python; {HOW}"
    if os.environ.get("AGENTRL_REQUIRE_VLLM") == "1":
        raise pytest.UsageError(f"AGENTRL_REQUIRE_VLLM=1 but {reason}")
    for item in items:
        if "tests/on_vllm" in str(item.fspath):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    """vLLM's CPU workers and the test's reference forward share 2 cores: one thread each."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def vllm_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_texts: list[str]):
    """A small Qwen2 checkpoint whose head size vLLM's CPU attention supports (64; the shared
    `tiny_model_dir` has 16, which vLLM's CPU kernels refuse)."""
    from agentrl.models import build_tiny_model

    return build_tiny_model(tiny_model_texts, tmp_path_factory.mktemp("vllm_model"), vocab_size=300,
                            hidden_size=128, num_layers=2, num_heads=2, num_kv_heads=1,
                            intermediate_size=256, max_position_embeddings=512, seed=0)
