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
def _cache_argument(forward_owner: type) -> str:
    parameters = inspect.signature(forward_owner.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_kwargs(model: torch.nn.Module, cache: Any) -> dict[str, Any]:
    """`{name: cache}` for `model(...)`, with the name its forward takes."""
    return {_cache_argument(type(model)): cache}
