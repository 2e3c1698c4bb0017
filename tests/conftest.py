"""Shared pytest fixtures."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest


def _tiny_model_texts(n: int = 400, seed: int = 0) -> list[str]:
    """Synthetic training text for the test tokenizer: chat turns, arithmetic and answer tags."""
    rng = random.Random(seed)
    words = ["search", "python", "answer", "the", "result", "is", "what", "compute", "sum", "of"]
    texts = []
    for _ in range(n):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(3, 8)))
        texts.append(
            f"<|im_start|>user\nWhat is {a} + {b}? {sentence}<|im_end|>\n"
            f"<|im_start|>assistant\n<python>print({a} + {b})</python> "
            f"<answer>{a + b}</answer><|im_end|>\n"
        )
    return texts


@pytest.fixture(scope="session")
def sandbox_missing():
    """Call with the reason a sandbox backend is unavailable: the test skips, or fails under
    ``AGENTRL_REQUIRE_SANDBOXES=1`` (CI), where the real backends must run."""

    def missing(reason: str) -> None:
        if os.environ.get("AGENTRL_REQUIRE_SANDBOXES") == "1":
            pytest.fail(f"AGENTRL_REQUIRE_SANDBOXES=1 but {reason}", pytrace=False)
        pytest.skip(reason)

    return missing


@pytest.fixture(scope="session")
def tiny_model_texts() -> list[str]:
    """The text the `tiny_model_dir` tokenizer was trained on."""
    return _tiny_model_texts()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_texts: list[str]) -> Path:
    """A very small Qwen2 checkpoint (hidden 64, 2 layers, vocab 300) saved in HF format.

    Built once per test session; load it with `agentrl.models.load_model(tiny_model_dir)`.
    """
    from agentrl.models import build_tiny_model

    out = tmp_path_factory.mktemp("tiny_model")
    return build_tiny_model(
        tiny_model_texts,
        out,
        vocab_size=300,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        seed=0,
    )
