"""Supervised fine-tuning on trajectories: next-token loss on action tokens only.

Demonstrations come from the rollout engine (`collect_demonstrations`), so the loss mask is the
same as in RL: prompts, observations and tool results are context, never targets.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence

import torch

from agentrl.models.precision import autocast as autocast_to
from agentrl.training.batch import collate
from agentrl.training.logprobs import token_logprobs
from agentrl.training.optim import make_optimizer, warmup_cosine
from agentrl.types import Trajectory


def sft_train(
    model: torch.nn.Module,
    tokenizer: Any,
    trajectories: Sequence[Trajectory],
    *,
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 1e-3,
    warmup_steps: int = 10,
    min_lr_ratio: float = 0.1,
    grad_clip: float = 1.0,
    seed: int = 0,
    autocast: torch.dtype | None = None,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train `model` in place; returns one metrics dict per optimizer step.

    `on_step(step, total_steps, metrics)` is called after every step (progress bars, logging).
    `autocast` (e.g. torch.bfloat16) runs the forward and backward in mixed precision.
    """
    if not trajectories:
        raise ValueError("no demonstrations to train on")
    device = next(model.parameters()).device
    order = list(range(len(trajectories)))
    steps_per_epoch = (len(order) + batch_size - 1) // batch_size
    total = steps_per_epoch * epochs
    optimizer = make_optimizer(model, lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    scheduler = warmup_cosine(optimizer, warmup_steps, total, min_lr_ratio)
    rng = random.Random(seed)
    history = []
    model.train()
    step = 0
    for _ in range(epochs):
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            chunk = [trajectories[i] for i in order[start:start + batch_size]]
            batch = collate(chunk, None, tokenizer.pad_token_id, device)
            with autocast_to(device, autocast):
                logprobs, _ = token_logprobs(model, batch.input_ids, batch.attention_mask)
            tokens = batch.loss_mask.sum().clamp(min=1.0)
            loss = -(logprobs * batch.loss_mask).sum() / tokens
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            metrics = {"sft/loss": float(loss.item()), "sft/grad_norm": float(grad_norm),
                       "sft/lr": scheduler.get_last_lr()[0],
                       "sft/token_accuracy": _token_accuracy(logprobs, batch.loss_mask)}
            history.append(metrics)
            if on_step is not None:
                on_step(step, total, metrics)
    model.eval()
    return history


def _token_accuracy(logprobs: torch.Tensor, mask: torch.Tensor) -> float:
    # A target token with log-prob > log(0.5) is certainly the argmax.
    confident = (logprobs.detach() > -0.6931).float() * mask
    return float(confident.sum() / mask.sum().clamp(min=1.0))

