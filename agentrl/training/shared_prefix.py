"""Shared-prefix forward for the update: every token that several sequences share goes through once.

The G rollouts of a GRPO group start with the same prompt (system prompt, task, and often the
same first turns), and branched rollouts (Tree-GRPO) share whole turns at several depths: a
group's sequences form a tree. A plain forward pass computes a shared token once per sequence.
Here the sequences of a micro-batch are arranged in a *trie*: a compressed radix trie over their
token ids, one per group (rows of different groups never share), where a node is a maximal run of
tokens that the same set of rows has in common. Each distinct node is forwarded once; the logits
of every row are then read back from the nodes on its path, in the layout a plain forward
returns, so log-probs, entropy and the loss are computed exactly as before. The result equals a
plain forward up to floating-point rounding, gradients included: every row's loss flows back
through the one computation of each shared token.

A row needs no token of its own: the logits at a position depend only on the tokens up to it,
so the logits at the last token of a shared node are the same for every row through it (each
row then reads a different *target* there, its own next token, which `token_logprobs` picks).
Identical rows, and a row that is a prefix of another, cost nothing extra.

How the nodes are forwarded: level by level, with a key/value cache. The roots (depth 0) go
through the model as one batch; then the nodes of depth 1 as one batch, each on top of the
keys and values of its path so far, gathered out of the previous level's cache (an indexing op,
so the gradients of every child flow back into its ancestors' pass), and so on. The gathered
path is compacted (right-padded to the longest path of the level, never to the sum of the
levels' widths), so each node attends over exactly its own ancestors plus padding.

The other way is AReaL's tree training: pack each tree's distinct tokens into one sequence, in
one forward pass whose attention mask lets a token see its ancestors only. Both were measured
on the search demo's update (benchmarks/shared_prefix_update.py, docs/benchmarks.md; CPU, one
thread). Where rollouts share much (the SFT-warmed policy: GRPO groups, and Tree-GRPO's trees),
the tree mask was 1.15 to 1.3 times faster than the levels, which pad each level's nodes to
its longest one; where they share only the prompt (an untrained policy: 5 rollouts of about 165
own tokens each), the tree mask was 1.4 (sdpa) to 2 (eager) times slower than the levels and
slower than forwarding every sequence whole, since a packed tree of N tokens computes N x N
attention scores (and holds an N x N mask) however few of them the mask keeps, while a level
costs each node its own path only. The levels are used: faster than a plain forward in every
case measured (1.3 to 3.2 times), with a cost that grows with each row's length, not with the
square of a whole group's. Deep tries with many small nodes take a pass per level;
`max_levels` bounds them.

The idea is the one behind Prefix Grouper (2025) for GRPO and tree training for agentic RL;
this is a small, model-agnostic version for Hugging Face causal LMs whose forward takes a
`DynamicCache` and `position_ids` (Qwen2 and its kin, `supports_shared_prefix`). For any
other model `token_logprobs` falls back to a plain forward.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Hashable, Sequence

import torch
from transformers import DynamicCache

from agentrl.models.kv_cache import cache_kwargs, forward_parameters, layer_states


@dataclass(frozen=True)
class TrieNode:
    """A maximal run of tokens shared by the same rows: positions [start, start + length) of `row`.

    Every row through the node holds the same tokens at those positions (`row` is one of them,
    the one the tokens are read from). `parent` is the node just before it (None for a root,
    which starts at position 0); `depth` counts its ancestors, so nodes of one depth are one
    forward pass.
    """

    row: int
    start: int
    length: int
    parent: int | None
    depth: int


@dataclass(frozen=True)
class PrefixPlan:
    """The trie of a right-padded batch's token sequences.

    `nodes` are ordered by depth (parents before children); `paths[b]` lists row b's nodes,
    root first: their tokens, end to end, are row b's tokens.
    """

    nodes: tuple[TrieNode, ...]
    paths: tuple[tuple[int, ...], ...]

    @property
    def forwarded_tokens(self) -> int:
        """Tokens this plan puts through the model: each distinct trie token once."""
        return sum(node.length for node in self.nodes)

    @property
    def plain_tokens(self) -> int:
        """Tokens a plain forward puts through the model: every row's, padding excluded."""
        return sum(self.nodes[path[-1]].start + self.nodes[path[-1]].length for path in self.paths)

    @property
    def saved_tokens(self) -> int:
        """Tokens a plain forward would compute that this plan does not."""
        return self.plain_tokens - self.forwarded_tokens

    @property
    def levels(self) -> int:
        """Forward passes this plan takes (the depth of its deepest node, plus one)."""
        return 1 + max(node.depth for node in self.nodes)


def plan_shared_prefixes(token_ids: Sequence[Sequence[int]], keys: Sequence[Hashable], *,
                         min_saved_tokens: int = 1, max_levels: int | None = None) -> PrefixPlan | None:
    """The trie of `token_ids`, one per key (e.g. group id): rows of different keys never share.

    `max_levels` bounds the forward passes: nodes that would lie deeper are not shared, each
    row forwards the rest of its tokens on its own (1 is a plain forward; 2 shares each group's
    common prefix only). Returns None when the plan would save fewer than `min_saved_tokens`
    tokens (no two rows of a key start alike): a plain forward is then as cheap and simpler.
    """
    if len(token_ids) != len(keys):
        raise ValueError(f"{len(token_ids)} sequences but {len(keys)} keys; give one key (group id) per sequence")
    if max_levels is not None and max_levels < 1:
        raise ValueError(f"max_levels={max_levels}; it counts forward passes, so give 1 or more (or None)")
    for row, ids in enumerate(token_ids):
        if len(ids) < 2:
            raise ValueError(f"row {row} has {len(ids)} token(s); a trainable sequence has at least 2")
    rows_of_key: dict[Hashable, list[int]] = defaultdict(list)
    for row, key in enumerate(keys):
        rows_of_key[key].append(row)

    nodes: list[TrieNode] = []
    last_node = [0] * len(token_ids)  # the node each row ends in
    # Breadth first, so nodes come out ordered by depth. An entry is a set of rows that agree
    # on their first `start` tokens and all go on past them, with the node those tokens end in.
    pending: list[tuple[list[int], int, int | None, int]] = [(rows, 0, None, 0) for rows in rows_of_key.values()]
    for rows, start, parent, depth in pending:  # the loop appends to `pending` as it goes
        last_level = max_levels is not None and depth == max_levels - 1
        for branch in ([[row] for row in rows] if last_level else _split_by_token(token_ids, rows, start)):
            first = token_ids[branch[0]]
            end = start + 1
            while all(len(token_ids[row]) > end and token_ids[row][end] == first[end] for row in branch):
                end += 1
            nodes.append(TrieNode(branch[0], start, end - start, parent, depth))
            going_on = []
            for row in branch:
                if len(token_ids[row]) == end:
                    last_node[row] = len(nodes) - 1
                else:
                    going_on.append(row)
            if going_on:
                pending.append((going_on, end, len(nodes) - 1, depth + 1))

    paths = []
    for node in last_node:
        path = [node]
        while nodes[path[-1]].parent is not None:
            path.append(nodes[path[-1]].parent)
        paths.append(tuple(reversed(path)))
    plan = PrefixPlan(tuple(nodes), tuple(paths))
    return plan if plan.saved_tokens >= min_saved_tokens else None


def _split_by_token(token_ids: Sequence[Sequence[int]], rows: list[int], position: int) -> list[list[int]]:
    """`rows` grouped by their token at `position`, in order of first appearance."""
    branches: dict[int, list[int]] = {}
    for row in rows:
        branches.setdefault(token_ids[row][position], []).append(row)
    return list(branches.values())


def supports_shared_prefix(model: torch.nn.Module) -> bool:
    """Whether `model` can run `shared_prefix_logits`: a Hugging Face causal LM whose forward
    takes a `DynamicCache` and `position_ids`, with full attention in every layer (a sliding
    window would drop the ancestors' keys that the cache hands over)."""
    config = getattr(model, "config", None)
    parameters = forward_parameters(model)
    if config is None or "position_ids" not in parameters:
        return False
    if not ({"cache", "past_key_values"} & parameters):
        return False
    if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
        return False
    return "sliding_attention" not in (getattr(config, "layer_types", None) or [])


def shared_prefix_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         plan: PrefixPlan) -> torch.Tensor:
    """Logits [B, T, V] of a right-padded batch, as `model(input_ids, attention_mask).logits`.

    Forwards each trie node of `plan` once, level by level (see the module docstring). Padded
    positions hold the logits of some real token (a plain forward holds logits of pad tokens
    there; neither is ever read, since the loss mask is 0 on padding).
    """
    _check_plan_fits(plan, attention_mask)
    device = input_ids.device
    by_depth: list[list[int]] = [[] for _ in range(plan.levels)]
    for index, node in enumerate(plan.nodes):
        by_depth[node.depth].append(index)
    slot_of = {}  # node -> (its row in its level's batch, the cache slot of its first token)
    level_logits = []
    cache = None
    for depth, level in enumerate(by_depth):
        width = max(plan.nodes[n].length for n in level)
        ids = torch.zeros(len(level), width, dtype=input_ids.dtype, device=device)
        own_mask = torch.zeros(len(level), width, dtype=attention_mask.dtype, device=device)
        starts = torch.tensor([plan.nodes[n].start for n in level], device=device)
        for i, n in enumerate(level):
            node = plan.nodes[n]
            ids[i, :node.length] = input_ids[node.row, node.start:node.start + node.length]
            own_mask[i, :node.length] = 1
        if depth == 0:
            context_width, mask = 0, own_mask
            cache = DynamicCache(config=model.config)
        else:
            cache, context_mask = _ancestor_cache(model, cache, plan, level, slot_of, device)
            context_width = context_mask.shape[1]
            mask = torch.cat([context_mask.to(attention_mask.dtype), own_mask], dim=1)
        positions = starts[:, None] + torch.arange(width, device=device)[None, :]
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    **cache_kwargs(model, cache))  # appends this level's keys and values to `cache`
        level_logits.append(out.logits)
        for i, n in enumerate(level):
            slot_of[n] = (i, context_width)

    # Back to the plain layout: row b, position t reads the logits of the node on b's path
    # that holds t, from the flat stack of every level's logits.
    offsets = [0]
    for logits in level_logits:
        offsets.append(offsets[-1] + logits.shape[0] * logits.shape[1])
    flat = torch.cat([logits.reshape(-1, logits.shape[-1]) for logits in level_logits])
    index = torch.zeros(input_ids.shape, dtype=torch.long)
    for b, path in enumerate(plan.paths):
        for n in path:
            node = plan.nodes[n]
            level_row = slot_of[n][0]
            first = offsets[node.depth] + level_row * level_logits[node.depth].shape[1]
            index[b, node.start:node.start + node.length] = torch.arange(first, first + node.length)
    return flat[index.to(device)]


def _ancestor_cache(model: torch.nn.Module, previous: DynamicCache, plan: PrefixPlan, level: list[int],
                    slot_of: dict[int, tuple[int, int]], device: torch.device) -> tuple[DynamicCache, torch.Tensor]:
    """A cache holding, for each node of `level`, the keys and values of all tokens before it.

    Those tokens are its parent's path: the parent's own context (the first `parent.start`
    cache slots of its row in the previous level's cache, compacted there the same way) and
    then the parent's own tokens (from the slot where the parent's level began). They are
    gathered into a fresh cache, from slot 0 on and right-padded to the level's longest
    context; returns that cache and its padding mask [nodes, slots].
    """
    width = max(plan.nodes[n].start for n in level)
    rows = torch.zeros(len(level), width, dtype=torch.long)
    slots = torch.zeros(len(level), width, dtype=torch.long)
    mask = torch.zeros(len(level), width, dtype=torch.long)
    for i, n in enumerate(level):
        parent = plan.nodes[plan.nodes[n].parent]
        parent_row, parent_slot = slot_of[plan.nodes[n].parent]
        rows[i] = parent_row
        slots[i, :parent.start] = torch.arange(parent.start)
        slots[i, parent.start:parent.start + parent.length] = torch.arange(parent_slot, parent_slot + parent.length)
        mask[i, :parent.start + parent.length] = 1
    rows, slots = rows.to(device), slots.to(device)
    cache = DynamicCache(config=model.config)
    for layer, (keys, values) in enumerate(layer_states(previous)):
        # [N, heads, slots, dim][rows, :, slots] -> [M, width, heads, dim]; differentiable indexing
        cache.update(keys[rows, :, slots].transpose(1, 2), values[rows, :, slots].transpose(1, 2), layer)
    return cache, mask.to(device)


def _check_plan_fits(plan: PrefixPlan, attention_mask: torch.Tensor) -> None:
    """A plan made for other sequences would silently mix rows up: refuse it."""
    lengths = attention_mask.sum(dim=1).tolist()
    planned = [plan.nodes[path[-1]].start + plan.nodes[path[-1]].length for path in plan.paths]
    if planned != lengths:
        raise ValueError(f"the prefix plan covers rows of lengths {planned} but the batch has {lengths}; "
                         "make the plan with plan_shared_prefixes from this batch's token ids, in its row order")
