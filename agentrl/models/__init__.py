"""Offline model recipes: a tiny tokenizer + Qwen2-architecture model built locally (DESIGN 3.8)."""

from agentrl.models.attention import attention_implementation
from agentrl.models.kv_cache import cache_kwargs
from agentrl.models.lora import (
    AdapterMismatch,
    adapter_config,
    adapter_state_dict,
    apply_lora,
    inference_state_dict,
    is_peft_model,
    merge_adapter,
)
from agentrl.models.precision import autocast, bf16_is_fast, resolve_autocast
from agentrl.models.tiny import CHATML_TEMPLATE, build_tiny_model, load_model, train_tokenizer

__all__ = [
    "CHATML_TEMPLATE",
    "AdapterMismatch",
    "adapter_config",
    "adapter_state_dict",
    "apply_lora",
    "attention_implementation",
    "autocast",
    "bf16_is_fast",
    "build_tiny_model",
    "cache_kwargs",
    "inference_state_dict",
    "is_peft_model",
    "load_model",
    "merge_adapter",
    "resolve_autocast",
    "train_tokenizer",
]
