"""Mixed precision: run a model's matrix products in bfloat16 while its weights stay float32.

`torch.autocast` casts the inputs of matmuls and linear layers to bfloat16 and keeps reductions
(softmax, norms, losses) in float32. The weights, gradients and optimizer state keep the
model's own dtype, so small updates are not rounded away. On a CPU with native bfloat16
instructions (AVX512-BF16, AMX) or a recent GPU this roughly halves the time of a forward and
backward pass of the tiny model; on a CPU without them bfloat16 is emulated and slower, which
is why `"auto"` checks first.

Sampling and training must use the same setting: the behaviour log-probs recorded at rollout
and the ones recomputed in the update then differ by rounding only (importance ratios within
a few percent of 1, approx_kl ~1e-6 on the arithmetic demo).
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Literal

import torch

Autocast = Literal["none", "bfloat16", "auto"]


def bf16_is_fast(device: str | torch.device) -> bool:
    """Whether `device` multiplies bfloat16 matrices natively (not by emulation)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # oneDNN's own check (AVX512-BF16 or AMX); a private op, so a torch build without it
        # counts as "not fast" rather than failing.
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_autocast(setting: Autocast, device: str | torch.device) -> torch.dtype | None:
    """The dtype to autocast to on `device` for a config setting (None: full precision)."""
    if setting == "none":
        return None
    if setting == "bfloat16":
        return torch.bfloat16
    if setting == "auto":
        return torch.bfloat16 if bf16_is_fast(device) else None
    raise ValueError(f"unknown autocast setting {setting!r}; use 'none', 'bfloat16' or 'auto'")


def autocast(device: str | torch.device, dtype: torch.dtype | None) -> ContextManager:
    """`torch.autocast` on `device` to `dtype`, or a no-op context when `dtype` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
