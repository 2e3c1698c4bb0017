"""Shared-prefix forward for the update: a group's common prompt goes through the model once.

The G rollouts of a GRPO group start with the same prompt (system prompt, task, and often the
same first turns), which is most of a short episode's tokens. A plain forward pass computes
that prompt G times. Here each *family* of rows (a group's sequences in one micro-batch)
forwards its longest common prefix once; its keys and values are then indexed out to every
member (an indexing op, so gradients from all members flow back into the one prefix pass) and
each member forwards only its own suffix on top. The logits are put back together in the
layout a plain forward returns, so log-probs, entropy and the loss are computed exactly as
before: the result equals a plain forward up to floating-point rounding, while the update's
token count drops by (G - 1) times the shared length per group.

The idea is the one behind Prefix Grouper (2025) for GRPO; this is a small, model-agnostic
version for Hugging Face causal LMs with a `DynamicCache` (Qwen2 and its kin).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from agentrl.models import cache_kwargs


@dataclass(frozen=True)
class PrefixPlan:
    """Which rows of a right-padded batch share which prefix.

    `family[b]` is row b's family, `rows[f]` the row whose tokens stand for family f's prefix,
    `prefix_lengths[f]` how many leading tokens family f shares (at least 1, and at most every
    member's length - 1, so every member keeps a suffix of its own).
    """

    family: list[int]
    rows: list[int]
    prefix_lengths: list[int]

    @property
    def saved_tokens(self) -> int:
        """Tokens a plain forward would compute that this plan computes once per family."""
        sizes = [0] * len(self.rows)
        for f in self.family:
            sizes[f] += 1
        return sum((size - 1) * length for size, length in zip(sizes, self.prefix_lengths))


def plan_shared_prefixes(token_ids: Sequence[Sequence[int]], keys: Sequence[Hashable],
                         *, min_saved_tokens: int = 1) -> PrefixPlan | None:
    """Families by `keys` (e.g. group ids) and the common prefix of each family's sequences.

    Returns None when sharing would save fewer than `min_saved_tokens` tokens (no two rows
    share a key, or they diverge at once): a plain forward is then as cheap and simpler.
    """
    family_of: dict[Hashable, int] = {}
    family: list[int] = []
    rows: list[int] = []
    prefix_lengths: list[int] = []
    for row, (ids, key) in enumerate(zip(token_ids, keys)):
        if len(ids) < 2:
            raise ValueError(f"row {row} has {len(ids)} token(s); a trainable sequence has at least 2")
        f = family_of.setdefault(key, len(rows))
        family.append(f)
        if f == len(rows):  # the family's first row stands for its prefix
            rows.append(row)
            prefix_lengths.append(len(ids) - 1)
            continue
        first = token_ids[rows[f]]
        shared = 0
        limit = min(prefix_lengths[f], len(ids) - 1)
        while shared < limit and first[shared] == ids[shared]:
            shared += 1
        prefix_lengths[f] = shared
    if any(length == 0 for length in prefix_lengths):
        # A family whose members differ at the first token shares nothing: give each of its
        # rows a family of its own (prefix = all but its last token, the plain cost).
        return plan_shared_prefixes(token_ids, [
            (key, row) if prefix_lengths[family[row]] == 0 else key for row, key in enumerate(keys)
        ], min_saved_tokens=min_saved_tokens)
    plan = PrefixPlan(family, rows, prefix_lengths)
    return plan if plan.saved_tokens >= min_saved_tokens else None


def shared_prefix_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         plan: PrefixPlan) -> torch.Tensor:
    """Logits [B, T, V] of a right-padded batch, as `model(input_ids, attention_mask).logits`.

    Padded positions hold zeros (a plain forward holds logits of pad tokens there; neither is
    ever read, since the loss mask is 0 on padding).
    """
    device = input_ids.device
    lengths = attention_mask.sum(dim=1).tolist()
    family = torch.tensor(plan.family, device=device)
    prefix_of_row = [plan.prefix_lengths[f] for f in plan.family]

    # 1. Each family's prefix once: right-padded [F, P], positions 0..P_f-1.
    width = max(plan.prefix_lengths)
    prefix_ids = torch.zeros(len(plan.rows), width, dtype=input_ids.dtype, device=device)
    prefix_mask = torch.zeros(len(plan.rows), width, dtype=attention_mask.dtype, device=device)
    for f, (row, length) in enumerate(zip(plan.rows, plan.prefix_lengths)):
        prefix_ids[f, :length] = input_ids[row, :length]
        prefix_mask[f, :length] = 1
    positions = torch.arange(width, device=device).expand(len(plan.rows), width)
    cache = DynamicCache(config=model.config)
    prefix = model(input_ids=prefix_ids, attention_mask=prefix_mask, position_ids=positions,
                   use_cache=True, **cache_kwargs(model, cache))  # fills `cache` in place
    cache.batch_select_indices(family)  # [F, ...] -> [B, ...]; differentiable indexing

    # 2. Each row's suffix on top of its family's keys and values: positions continue at P_f;
    # the prefix's padding stays masked, so a suffix token sees exactly its own prompt.
    suffix_width = max(n - p for n, p in zip(lengths, prefix_of_row))
    suffix_ids = torch.zeros(len(lengths), suffix_width, dtype=input_ids.dtype, device=device)
    suffix_mask = torch.zeros(len(lengths), suffix_width, dtype=attention_mask.dtype, device=device)
    for b, (n, p) in enumerate(zip(lengths, prefix_of_row)):
        suffix_ids[b, :n - p] = input_ids[b, p:n]
        suffix_mask[b, :n - p] = 1
    start = torch.tensor(prefix_of_row, device=device)[:, None]
    suffix_positions = start + torch.arange(suffix_width, device=device)[None, :]
    suffix = model(input_ids=suffix_ids, attention_mask=torch.cat([prefix_mask[family], suffix_mask], dim=1),
                   position_ids=suffix_positions, use_cache=True, **cache_kwargs(model, cache))

    # 3. Back to the plain layout: row b's logits are its family's prefix, then its suffix.
    pieces = [torch.cat([prefix.logits[plan.family[b], :p], suffix.logits[b, :n - p]])
              for b, (n, p) in enumerate(zip(lengths, prefix_of_row))]
    logits = torch.nn.utils.rnn.pad_sequence(pieces, batch_first=True)
    missing = input_ids.shape[1] - logits.shape[1]  # the batch may be padded past its longest row
    return F.pad(logits, (0, 0, 0, missing)) if missing > 0 else logits
