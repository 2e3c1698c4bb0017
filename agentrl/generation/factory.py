"""The generator a recipe asks for (`generation.backend`), built once and injected.

The trainer and `agentrl eval` never construct a backend themselves: `make_generator` reads the
recipe's `generation` section and returns a `Generator`. A backend whose package is missing, or
a server that cannot be used, fails here with one line naming the cause and the fix, before any
env starts.

Weight sync: a generator that samples from its own copy of the weights (vLLM in-process, a vLLM
server) has `sync_weights(model)`; the trainer calls it after every update. The `hf` backend
samples from the very module the trainer updates and needs none.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch

from agentrl.config import (
    ConfigError,
    GenerationConfig,
    HFGenerationConfig,
    OpenAIGenerationConfig,
    VLLMGenerationConfig,
)
from agentrl.generation.base import Generator
from agentrl.generation.hf import HFGenerator
from agentrl.generation.openai import OpenAIGenerator


class BackendUnavailable(ConfigError):
    """The recipe names a generation backend this Python cannot run (its package is missing)."""


def make_generator(
    settings: GenerationConfig,
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    max_batch_size: int,
    max_model_len: int,
    autocast: torch.dtype | None = None,
) -> Generator:
    """Build the generator of `settings` for `model` (the policy the trainer updates).

    `max_batch_size`: rows per forward pass (hf) or requests in flight; `max_model_len`: the
    longest prompt + completion the run makes (rollout.max_total_tokens).
    """
    build = GENERATOR_BACKENDS[settings.backend]
    return build(settings, model, tokenizer, max_batch_size=max_batch_size,
                 max_model_len=max_model_len, autocast=autocast)


def sync_weights(generator: Generator, model: torch.nn.Module) -> float:
    """Hand the trainer's new weights to the generator; returns the seconds it took (0 when
    the generator shares the module)."""
    sync: Callable[[torch.nn.Module], Any] | None = getattr(generator, "sync_weights", None)
    if sync is None:
        return 0.0
    import time

    started = time.perf_counter()
    sync(model)
    return time.perf_counter() - started


def close_generator(generator: Generator) -> None:
    """Release what a backend holds (an engine, a connection pool); a no-op for hf."""
    close = getattr(generator, "close", None)
    if close is not None:
        close()


# --- backends ----------------------------------------------------------------------------------


def _hf(settings: HFGenerationConfig, model, tokenizer, *, max_batch_size: int, max_model_len: int,
        autocast: torch.dtype | None) -> Generator:
    del settings, max_model_len
    return HFGenerator(getattr(model, "module", model), tokenizer, max_batch_size=max_batch_size,
                       autocast=autocast)


def _vllm(settings: VLLMGenerationConfig, model, tokenizer, *, max_batch_size: int, max_model_len: int,
          autocast: torch.dtype | None) -> Generator:
    try:
        import vllm  # noqa: F401  (only to tell a missing install from other errors)
    except ImportError as exc:
        raise BackendUnavailable(
            f"generation.backend=vllm: vLLM cannot be imported in this Python ({exc}); install it "
            "(`make vllm` builds .venv-vllm with vLLM's CPU build, docs/scale.md) and run from that "
            "environment, or set generation=hf") from None
    from agentrl.generation.vllm import VLLMGenerator

    length = settings.max_model_len or max_model_len
    _check_model_len(model, length, "generation.max_model_len" if settings.max_model_len
                     else "rollout.max_total_tokens")
    return VLLMGenerator.from_config(settings, model, tokenizer, max_batch_size=max_batch_size,
                                     max_model_len=length, autocast=autocast)


def _check_model_len(model: torch.nn.Module, length: int, setting: str) -> None:
    """vLLM refuses a max_model_len beyond the model's positions (in a long validation error,
    after the checkpoint was written): say it in one line first."""
    config = getattr(getattr(model, "module", model), "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and length > positions:
        raise ConfigError(
            f"{setting}={length} is longer than the model's max_position_embeddings={positions}, "
            f"which vLLM refuses; set rollout.max_total_tokens (or generation.max_model_len) to at most "
            f"{positions}")


def _openai(settings: OpenAIGenerationConfig, model, tokenizer, *, max_batch_size: int,
            max_model_len: int, autocast: torch.dtype | None) -> Generator:
    del model, max_batch_size, max_model_len, autocast
    api_key = None
    if settings.api_key_env is not None:
        api_key = os.environ.get(settings.api_key_env)
        if not api_key:
            raise ConfigError(f"generation.api_key_env={settings.api_key_env}: that environment variable "
                              "is not set; export the server's API key under that name")
    generator = OpenAIGenerator(settings.base_url, settings.model, api_key=api_key, timeout=settings.timeout,
                                max_batch_size=settings.max_concurrency)
    try:
        generator.check_server(tokenizer if settings.check_tokenizer else None)
        if settings.weight_sync == "vllm":
            from agentrl.generation.vllm_server import attach_server_weight_sync

            attach_server_weight_sync(generator, settings)
    except BaseException:
        generator.close()
        raise
    return generator


#: generation.backend -> the function that builds it
GENERATOR_BACKENDS: dict[str, Callable[..., Generator]] = {"hf": _hf, "vllm": _vllm, "openai": _openai}
