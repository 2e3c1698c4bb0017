"""The prefix cache's store: keys and values of token sequences, each shared prefix held once.

`HFGenerator.prefix_cache()` keeps the keys and values of every prompt + completion it
finishes, so that a later prompt that starts with one of them prefills only the rest. In a
causal LM the keys and values at position i depend on tokens 0..i only, so the first L
positions of a cached sequence serve every prompt that starts with the same L tokens, whatever
follows: the next turn of the same episode, a branch forked from any earlier turn of it, or a
sibling rollout that shares only the first prompt.

`KVPrefixTree` is a radix tree over token ids. Each node (a `_Segment`) holds a run of tokens
and their keys and values; its children continue it, one per distinct next token. Storing a
sequence walks down as far as the tree already holds it and adds one segment for the rest
(splitting a segment in two where the sequence leaves it part-way), so a prefix that many
sequences share is stored once. Looking up a prompt walks down the same way and returns the
keys and values along the path: the longest stored prefix, at any length, not only where a
stored sequence ended.

Memory is bounded in tokens. Segments are kept in least-recently-used order, and every use (a
lookup that hits, a sequence stored) refreshes its whole path, each segment after the segments
below it. A segment is therefore always more recent than its descendants, the least recently
used one is a leaf, and evicting it leaves the rest of the tree intact.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, NamedTuple, Sequence

import torch

#: Keys and values of consecutive positions: per layer, (keys, values), each of shape
#: [kv heads, positions, head dim].
KV = list[tuple[torch.Tensor, torch.Tensor]]


class CachedPrefix(NamedTuple):
    """The keys and values of a prompt's first `length` tokens, as consecutive `pieces` (one per
    tree segment on the way; their positions add up to `length`). Length 0: nothing cached."""

    length: int
    pieces: tuple[KV, ...]


NO_PREFIX = CachedPrefix(0, ())


class _Segment:
    """A node of the tree: `tokens` following its parent's, with their keys and values."""

    __slots__ = ("tokens", "kv", "parent", "children")

    def __init__(self, tokens: tuple[int, ...], kv: KV, parent: _Segment | None) -> None:
        self.tokens = tokens
        self.kv = kv
        self.parent = parent
        #: the segments that continue this one, by their first token
        self.children: dict[int, _Segment] = {}


#: Where a walk down the tree went: each segment passed and how many of its tokens matched
#: (all of them, except perhaps for the last segment).
_Path = list[tuple[_Segment, int]]


class KVPrefixTree:
    """Keys and values of token sequences, looked up by the longest stored prefix of a prompt.

    At most `max_tokens` positions are held; beyond that the least recently used leaves go.
    """

    def __init__(self, max_tokens: int) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}.")
        self.max_tokens = max_tokens
        #: positions whose keys and values the tree holds now (each shared prefix counted once)
        self.tokens = 0
        self._root = _Segment((), [], None)
        # Every segment but the root, least recently used first (values unused).
        self._recency: OrderedDict[_Segment, None] = OrderedDict()

    @property
    def nbytes(self) -> int:
        """Bytes of the keys and values held."""
        return sum(k.nbytes + v.nbytes for segment in self._recency for k, v in segment.kv)

    def longest_prefix(self, prompt: Sequence[int]) -> CachedPrefix:
        """The keys and values of the longest stored prefix of `prompt` that leaves at least its
        last token out (the model needs one new token to compute the next token's logits).

        A hit counts as a use of the segments it reads.
        """
        path, matched = self._walk(prompt, len(prompt) - 1)
        if not path:
            return NO_PREFIX
        self._touch(path)
        pieces = tuple(segment.kv if used == len(segment.tokens) else _first_positions(segment.kv, used)
                       for segment, used in path)
        return CachedPrefix(matched, pieces)

    def insert(self, sequence: Sequence[int], keys_values_from: Callable[[int], KV]) -> None:
        """Store `sequence`. `keys_values_from(start)` gives the keys and values of its positions
        from `start` on, as new tensors; it is called only for what the tree does not hold yet.

        A sequence longer than `max_tokens` is not stored. Storing one refreshes its path and
        may evict the least recently used leaves, never a segment of this sequence.
        """
        if len(sequence) > self.max_tokens:
            return
        path, matched = self._walk(sequence, len(sequence))
        if matched < len(sequence):
            if path and path[-1][1] < len(path[-1][0].tokens):
                # The sequence leaves this segment part-way: its matched part becomes a segment
                # of its own, which the rest of the sequence then continues.
                segment, used = path[-1]
                path[-1] = (self._split(segment, used), used)
            parent = path[-1][0] if path else self._root
            rest = tuple(sequence[matched:])
            leaf = _Segment(rest, keys_values_from(matched), parent)
            assert all(k.shape[1] == len(rest) == v.shape[1] for k, v in leaf.kv), \
                "keys_values_from(start) must cover exactly the positions from start to the end"
            parent.children[rest[0]] = leaf
            self.tokens += len(rest)
            path.append((leaf, len(rest)))
        self._touch(path)
        self._evict()

    def _walk(self, tokens: Sequence[int], limit: int) -> tuple[_Path, int]:
        """Follow `tokens[:limit]` down from the root as far as the tree holds it; the segments
        passed and the number of tokens matched."""
        path: _Path = []
        node, matched = self._root, 0
        while matched < limit:
            child = node.children.get(tokens[matched])
            if child is None:
                break
            used = _common_length(child.tokens, tokens, matched, limit)
            path.append((child, used))
            matched += used
            if used < len(child.tokens):
                break
            node = child
        return path, matched

    def _split(self, segment: _Segment, at: int) -> _Segment:
        """Cut `segment` after its first `at` tokens; return the new upper part, which takes its
        place under the parent and has the lower part as its only child."""
        assert segment.parent is not None and 0 < at < len(segment.tokens)
        upper = _Segment(segment.tokens[:at], _positions(segment.kv, 0, at), segment.parent)
        segment.parent.children[upper.tokens[0]] = upper
        # New tensors, not views: a view would keep the whole old tensor alive after either
        # part is evicted. (Lookups made earlier keep their own references to the old one.)
        segment.tokens, segment.kv = segment.tokens[at:], _positions(segment.kv, at, len(segment.tokens))
        segment.parent = upper
        upper.children[segment.tokens[0]] = segment
        self._recency[upper] = None  # more recent than the lower part, as an ancestor must be
        return upper

    def _touch(self, path: _Path) -> None:
        """Mark the segments of `path` as just used, the deepest first, so that each ends up
        more recent than everything below it."""
        for segment, _ in reversed(path):
            self._recency[segment] = None
            self._recency.move_to_end(segment)

    def _evict(self) -> None:
        """Drop least recently used segments (always leaves) until the budget holds."""
        while self.tokens > self.max_tokens:
            segment, _ = self._recency.popitem(last=False)
            assert not segment.children and segment.parent is not None, "the oldest segment is a leaf"
            del segment.parent.children[segment.tokens[0]]
            self.tokens -= len(segment.tokens)


def _common_length(stored: tuple[int, ...], tokens: Sequence[int], start: int, limit: int) -> int:
    """How many of `stored` equal `tokens[start:limit]`, counted from the first."""
    n = min(len(stored), limit - start)
    if tuple(tokens[start : start + n]) == stored[:n]:  # the usual case, compared in one go
        return n
    return next(i for i in range(n) if stored[i] != tokens[start + i])


def _first_positions(kv: KV, n: int) -> KV:
    """Views of the first n positions (what a lookup hands out; nothing is copied)."""
    return [(k[:, :n], v[:, :n]) for k, v in kv]


def _positions(kv: KV, start: int, end: int) -> KV:
    """Copies of positions start..end-1."""
    return [(k[:, start:end].clone(), v[:, start:end].clone()) for k, v in kv]
