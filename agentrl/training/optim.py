"""Optimizer and learning-rate schedule: AdamW with linear warmup then cosine decay."""

from __future__ import annotations

import math

import torch


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float,
                   betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW over the parameters of `model` that require gradients: with LoRA adapters
    (`model.lora`) only the adapters, so no optimizer state is kept for the frozen base."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"{type(model).__name__} has no parameter that requires gradients: nothing to train")
    # foreach=True keeps the step to a few fused kernels, which matters on CPU.
    return torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay, betas=betas, foreach=True)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_lr_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """LR factor: linear from 1/(warmup+1) to 1 over `warmup_steps`, then cosine to min_lr_ratio."""
    total_steps = max(total_steps, 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
