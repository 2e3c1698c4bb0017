"""Which attention kernel a Hugging Face model runs, for the span of a `with` block.

Sampling and the update are different workloads: sampling decodes one token at a time over a
cache, where PyTorch's fused `sdpa` kernel is fastest, while the update runs forward and
backward over whole short sequences, where on a CPU the plain `eager` kernel (matmul + masked
softmax) was faster where it was measured: the RL update of the search demo took 1.3 times
less with it in bfloat16 on a CPU with native bfloat16, and about the same time in float32
(benchmarks/shared_prefix_update.py, docs/benchmarks.md). The kernels compute the same
attention; results differ by rounding only.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Literal

import torch

Attention = Literal["model", "eager", "sdpa"]


@contextlib.contextmanager
def attention_implementation(model: torch.nn.Module, name: Attention) -> Iterator[None]:
    """Run `model` with the attention kernel `name` inside the block ("model": leave it as loaded)."""
    if name == "model":
        yield
        return
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "set_attn_implementation"):
        raise ValueError(f"attention {name!r} needs a Hugging Face model; {type(model).__name__} is not "
                         "one. Set train.attention=model.")
    previous = config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)
