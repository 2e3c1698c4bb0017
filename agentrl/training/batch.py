"""Packing trajectories into padded tensors for the loss, and splitting them into micro-batches."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np
import torch

from agentrl.types import Trajectory


@dataclass
class TokenBatch:
    """Right-padded [B, T] tensors of one (micro-)batch."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    old_logprobs: torch.Tensor
    advantages: torch.Tensor

    @property
    def num_tokens(self) -> int:
        """Trainable tokens in this batch (the token-mean denominator)."""
        return int(self.loss_mask.sum().item())

    @property
    def num_sequences(self) -> int:
        """Sequences with at least one trainable token (the seq-mean denominator)."""
        return int((self.loss_mask.sum(dim=1) > 0).sum().item())


def collate(
    trajectories: Sequence[Trajectory],
    token_advantages: Sequence[np.ndarray] | None,
    pad_id: int,
    device: str | torch.device = "cpu",
) -> TokenBatch:
    """Pad trajectories to the longest one. `token_advantages[i]` has len(token_ids) entries."""
    length = max(len(t.token_ids) for t in trajectories)
    size = (len(trajectories), length)
    input_ids = torch.full(size, pad_id, dtype=torch.long)
    attention = torch.zeros(size, dtype=torch.long)
    loss_mask = torch.zeros(size, dtype=torch.float32)
    old = torch.zeros(size, dtype=torch.float32)
    adv = torch.zeros(size, dtype=torch.float32)
    for i, traj in enumerate(trajectories):
        n = len(traj.token_ids)
        input_ids[i, :n] = torch.tensor(traj.token_ids)
        attention[i, :n] = 1
        loss_mask[i, :n] = torch.tensor(traj.loss_mask, dtype=torch.float32)
        old[i, :n] = torch.tensor(traj.logprobs, dtype=torch.float32)
        if token_advantages is not None:
            adv[i, :n] = torch.from_numpy(np.asarray(token_advantages[i], dtype=np.float32))
    return TokenBatch(input_ids.to(device), attention.to(device), loss_mask.to(device),
                      old.to(device), adv.to(device))


def micro_batches(indices: Sequence[int], lengths: Sequence[int], size: int) -> list[list[int]]:
    """Split `indices` into chunks of at most `size`, grouping similar lengths to cut padding."""
    ordered = sorted(indices, key=lambda i: lengths[i])
    return [ordered[k:k + size] for k in range(0, len(ordered), size)]


def family_micro_batches(indices: Sequence[int], lengths: Sequence[int], families: Sequence[Hashable],
                         size: int) -> list[list[int]]:
    """Like `micro_batches`, but a family (a group's sequences) stays in one chunk where it fits.

    The shared-prefix forward computes a family's common prompt once per chunk it appears in,
    so splitting a family costs a prompt pass. Families are ordered by their longest sequence
    (similar lengths together cut padding) and packed whole while they fit in `size`; a family
    larger than `size` fills chunks of its own.
    """
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i in indices:
        members[families[i]].append(i)
    ordered = sorted(members.values(), key=lambda rows: max(lengths[i] for i in rows))
    chunks: list[list[int]] = []
    current: list[int] = []
    for rows in ordered:
        rows = sorted(rows, key=lambda i: lengths[i])
        if current and len(current) + len(rows) > size:
            chunks.append(current)
            current = []
        while len(rows) > size:
            chunks.append(rows[:size])
            rows = rows[size:]
        current += rows
    if current:
        chunks.append(current)
    return chunks
