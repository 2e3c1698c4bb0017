"""How tokens are sampled: the Generator protocol and its backends (docs/generation.md)."""

from agentrl.generation.base import Generator
from agentrl.generation.hf import HFGenerator
from agentrl.generation.openai import OpenAIGenerator

__all__ = ["Generator", "HFGenerator", "OpenAIGenerator"]
