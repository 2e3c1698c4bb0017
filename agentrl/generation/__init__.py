"""How tokens are sampled: the Generator protocol and its backends (docs/generation.md).

`make_generator` builds the backend a recipe's `generation` section names (hf, vllm, openai);
the vllm backend is imported only when asked for, since vLLM is an optional install.
"""

from agentrl.generation.base import Generator
from agentrl.generation.factory import (
    GENERATOR_BACKENDS,
    BackendUnavailable,
    close_generator,
    make_generator,
    sync_weights,
)
from agentrl.generation.hf import HFGenerator
from agentrl.generation.openai import OpenAIGenerator, ServerUnavailable, TokenizerMismatch

__all__ = ["Generator", "HFGenerator", "OpenAIGenerator", "make_generator", "sync_weights",
           "close_generator", "GENERATOR_BACKENDS", "BackendUnavailable", "ServerUnavailable",
           "TokenizerMismatch"]
