"""How to hand a key/value cache to a Hugging Face model, across transformers versions.

transformers 5.2x renamed the forward argument `past_key_values` to `cache` (the old name
still works with a deprecation warning and is due to be removed); earlier releases know only
`past_key_values`. The generator and the shared-prefix update build their own `DynamicCache`
and pass it under whichever name the model's forward declares.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch


@functools.cache
def _forward_parameters(forward_owner: type) -> frozenset[str]:
    return frozenset(inspect.signature(forward_owner.forward).parameters)


def forward_parameters(model: torch.nn.Module) -> frozenset[str]:
    """The argument names `model`'s forward declares. A peft LoRA wrapper's forward takes
    `**kwargs` and hands them on to the model it wraps, so that model's forward counts."""
    if type(model).__module__.startswith("peft.") and hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return _forward_parameters(type(model))


def cache_kwargs(model: torch.nn.Module, cache: Any) -> dict[str, Any]:
    """`{name: cache}` for `model(...)`, with the name its forward takes."""
    return {"cache" if "cache" in forward_parameters(model) else "past_key_values": cache}


def layer_states(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's (keys, values) [batch, heads, slots, dim] of a DynamicCache."""
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))
