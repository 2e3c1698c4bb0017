"""The prefix cache serves every branch of a rollout tree, in whatever later call it comes.

The tree store (`KVPrefixTree`) on its own, with keys that encode the prefix they belong to;
then `HFGenerator` with a real tiny model: branches forked from a finished turn and from the
middle of a completion, compared token for token with a generator without the cache.
"""

from __future__ import annotations

import random

import pytest
import torch

from agentrl.generation import HFGenerator
from agentrl.generation.prefix_tree import KV, KVPrefixTree
from agentrl.models import load_model
from agentrl.types import SamplingParams

# --- the store: a radix tree over token ids --------------------------------------------------

LAYERS, HEADS, DIM = 2, 1, 2


def prefix_keys(tokens: list[int], start: int = 0) -> KV:
    """Stand-in keys and values of positions `start..` of `tokens`: position i holds a number
    determined by tokens[:i+1] (as a causal LM's would be), so pieces glued in the wrong place
    or from the wrong sequence show up."""
    codes = [float(hash(tuple(tokens[: i + 1])) % 1_000_003) for i in range(start, len(tokens))]
    per_position = torch.tensor(codes, dtype=torch.float64)
    return [(per_position.repeat(HEADS, DIM, 1).transpose(1, 2) + layer,
             -per_position.repeat(HEADS, DIM, 1).transpose(1, 2) - layer) for layer in range(LAYERS)]


def glued(pieces: tuple[KV, ...]) -> KV:
    return [(torch.cat([p[layer][0] for p in pieces], dim=1), torch.cat([p[layer][1] for p in pieces], dim=1))
            for layer in range(LAYERS)]


def insert(tree: KVPrefixTree, tokens: list[int]) -> list[int]:
    """Store `tokens`; the starts the tree asked keys and values for."""
    asked: list[int] = []

    def keys_values_from(start: int) -> KV:
        asked.append(start)
        return prefix_keys(tokens, start)

    tree.insert(tokens, keys_values_from)
    return asked


def assert_serves(tree: KVPrefixTree, prompt: list[int], length: int) -> None:
    """The tree's longest prefix of `prompt` is `length` tokens long and holds their keys."""
    found = tree.longest_prefix(prompt)
    assert found.length == length
    if length:
        for (keys, values), (want_keys, want_values) in zip(glued(found.pieces), prefix_keys(prompt[:length])):
            assert torch.equal(keys, want_keys) and torch.equal(values, want_values)
    else:
        assert found.pieces == ()


def test_any_prefix_of_a_stored_sequence_is_served_and_shared_prefixes_are_stored_once():
    tree = KVPrefixTree(max_tokens=1000)
    turn1 = [1, 2, 3, 4, 5, 6]
    assert insert(tree, turn1) == [0]
    # The next turn continues it: only the new positions are asked for and stored.
    turn2 = turn1 + [7, 8, 9]
    assert insert(tree, turn2) == [6]
    assert tree.tokens == 9
    # A branch forks from the middle of turn 1: the segment is split, the fork adds its tail.
    fork = [1, 2, 3, 10, 11]
    assert insert(tree, fork) == [3]
    assert tree.tokens == 11
    # A sequence the tree already holds (a prefix of a stored one) costs nothing.
    assert insert(tree, [1, 2, 3, 4]) == []
    assert tree.tokens == 11
    per_position = sum(k[:, :1].nbytes + v[:, :1].nbytes for k, v in prefix_keys([1]))
    assert tree.nbytes == tree.tokens * per_position

    assert_serves(tree, turn2 + [12, 13], 9)    # the next turn of the longest branch
    assert_serves(tree, turn1 + [7, 99], 7)     # leaves a segment part-way
    assert_serves(tree, [1, 2, 3, 4, 5, 42], 5)  # shorter than any stored sequence
    assert_serves(tree, [1, 2, 3, 10, 11, 12], 5)
    assert_serves(tree, [1, 2, 3, 10], 3)       # an equal prompt leaves its last token to compute
    assert_serves(tree, turn2, 8)
    assert_serves(tree, [1], 0)
    assert_serves(tree, [2, 3, 4], 0)           # a match must start at the first token


def test_random_sequences_match_the_longest_common_prefix():
    rng = random.Random(0)
    tree = KVPrefixTree(max_tokens=100_000)
    stored: list[list[int]] = []
    for _ in range(200):
        # A small alphabet and shared starts make many forks, splits and nested prefixes.
        base = rng.choice(stored) if stored and rng.random() < 0.7 else []
        sequence = base[: rng.randint(0, len(base))] + [rng.randint(0, 3) for _ in range(rng.randint(1, 8))]
        if rng.random() < 0.5:
            insert(tree, sequence)
            stored.append(sequence)
        else:
            expected = max((_common(sequence, s) for s in stored), default=0)
            assert_serves(tree, sequence, min(expected, len(sequence) - 1))
    distinct_prefixes = {tuple(s[:i]) for s in stored for i in range(1, len(s) + 1)}
    assert tree.tokens == len(distinct_prefixes)


def _common(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_least_recently_used_leaves_go_first_and_a_hit_refreshes():
    tree = KVPrefixTree(max_tokens=12)
    a, b, c = [1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]
    for sequence in (a, b, c):
        insert(tree, sequence)
    assert tree.tokens == 12
    assert_serves(tree, a + [0], 4)  # a is now the most recently used
    insert(tree, [4, 4])             # over budget: b, the least recently used, goes
    assert tree.tokens == 10
    assert_serves(tree, b + [0], 0)
    assert_serves(tree, a + [0], 4)
    assert_serves(tree, c + [0], 4)
    # A fork of c splits it: the shared start [3, 3] and the fork's tail [5, 5] become the most
    # recent, c's own tail [3, 3] keeps c's place.
    insert(tree, [3, 3, 5, 5])       # 12 tokens: fits
    insert(tree, [6, 6])             # evicts the least recently used leaf: [4, 4]
    assert tree.tokens == 12
    assert_serves(tree, [4, 4, 0], 0)
    insert(tree, [7, 7, 7, 7, 7])    # then a, then c's tail; the fork keeps the shared [3, 3]
    assert tree.tokens == 11
    assert_serves(tree, a + [0], 0)
    assert_serves(tree, c + [0], 2)
    assert_serves(tree, [3, 3, 5, 5, 0], 4)
    # A sequence longer than the whole budget is not stored and evicts nothing.
    assert insert(tree, list(range(20))) == []
    assert tree.tokens == 11


def test_the_budget_holds_under_random_use():
    rng = random.Random(1)
    tree = KVPrefixTree(max_tokens=40)
    stored: list[list[int]] = []
    for _ in range(300):
        base = rng.choice(stored) if stored and rng.random() < 0.7 else []
        start = base[: rng.randint(0, min(len(base), 28))]  # at most 40 tokens: always stored
        sequence = start + [rng.randint(0, 3) for _ in range(rng.randint(1, 12))]
        insert(tree, sequence)
        stored.append(sequence)
        assert tree.tokens <= 40
        per_position = 2 * LAYERS * HEADS * DIM * 8  # keys and values, float64
        assert tree.nbytes == tree.tokens * per_position
        # The sequence just stored is always served whole; whatever else is served is exact.
        assert_serves(tree, sequence + [9], len(sequence))
        probe = rng.choice(stored)
        found = tree.longest_prefix(probe)
        assert_serves(tree, probe, found.length)


def test_bad_budget_is_refused():
    with pytest.raises(ValueError, match="max_tokens"):
        KVPrefixTree(0)


# --- the generator: every branch of a node reuses it, in any later call --------------------


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    return load_model(tiny_model_dir)


def encode(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def assert_same_as_without_cache(model, tok, prompts, seeds, completions, params) -> None:
    """Same tokens (same seeds) as a generator without the prefix cache, same log-probs up to
    float rounding."""
    plain = HFGenerator(model, tok, prefix_cache_tokens=0, eos_token_ids=[])
    reference = plain.generate(prompts, params, seeds=seeds)
    for c, ref in zip(completions, reference):
        assert c.token_ids == ref.token_ids
        assert torch.allclose(torch.tensor(c.logprobs), torch.tensor(ref.logprobs), atol=1e-4)


def test_branches_in_later_calls_reuse_the_node_they_fork_from(model_and_tokenizer):
    model, tok = model_and_tokenizer
    params = SamplingParams(temperature=1.0, max_new_tokens=8)
    # EOS off: every completion has max_new_tokens tokens, so there is a middle to fork from.
    gen = HFGenerator(model, tok, eos_token_ids=[])
    prompt = encode(tok, "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n")
    obs_a, obs_b = encode(tok, "yes"), encode(tok, "no")
    assert obs_a[0] != obs_b[0]
    with gen.prefix_cache():
        [turn1] = gen.generate([prompt], params, seeds=[1])
        node = prompt + turn1.token_ids  # the first turn of a finished episode
        # Two branches of that node, in a later call: each reuses all of it but the last
        # sampled token, whose keys were never computed.
        branches = [node + obs_a, node + obs_b]
        second = gen.generate(branches, params, seeds=[2, 3])
        assert [c.prompt_cached_tokens for c in second] == [len(node) - 1] * 2
        assert_same_as_without_cache(model, tok, branches, [2, 3], second, params)
        # The node is stored once, each branch adds its own tail.
        assert gen.cached_prefix_tokens == len(node) + (len(obs_a) + 7) + (len(obs_b) + 7)

        # Still later: a third branch of the same node, a branch from the middle of turn 1
        # (shorter than anything stored), and the next turn of branch a.
        fork_at = len(prompt) + 3
        obs_c = encode(tok, "maybe")
        assert obs_c[0] not in (obs_a[0], obs_b[0], node[fork_at]), "each branch must leave the others"
        later = [node + obs_c, node[:fork_at] + obs_c, branches[0] + second[0].token_ids + obs_b]
        third = gen.generate(later, params, seeds=[4, 5, 6])
        assert [c.prompt_cached_tokens for c in third] == [
            len(node),
            fork_at,
            len(branches[0]) + len(second[0].token_ids) - 1,
        ]
        assert_same_as_without_cache(model, tok, later, [4, 5, 6], third, params)
    assert gen.reused_prompt_tokens == sum(c.prompt_cached_tokens for c in second + third)


def test_with_a_small_budget_the_least_recently_used_go_and_results_stay_exact(model_and_tokenizer):
    model, tok = model_and_tokenizer
    new_tokens = 6
    params = SamplingParams(temperature=1.0, max_new_tokens=new_tokens)
    a, b, c = (encode(tok, text) for text in ("a", "the result is", "search python"))
    assert len({a[0], b[0], c[0]}) == 3, "the three episodes must share no prefix"
    observation = encode(tok, "\n<|im_start|>user\nno.<|im_end|>\n")
    fork_tail = new_tokens - 1 + len(observation)  # what a fork from turn 1 adds to the store
    stored = {name: len(p) + new_tokens - 1 for name, p in (("a", a), ("b", b), ("c", c))}
    # Room for the three first turns, not for a fork as well.
    budget = sum(stored.values()) + fork_tail - 1
    gen = HFGenerator(model, tok, prefix_cache_tokens=budget, eos_token_ids=[])
    with gen.prefix_cache():
        # One call each, so that the oldest is a, then b, then c.
        [turn_a] = gen.generate([a], params, seeds=[1])
        [turn_b] = gen.generate([b], params, seeds=[2])
        [turn_c] = gen.generate([c], params, seeds=[3])
        assert gen.cached_prefix_tokens == sum(stored.values())
        # A fork from the middle of a's completion uses a, so b is now the least recently used
        # and goes when the fork is stored.
        fork = a + turn_a.token_ids[:2] + observation
        [forked] = gen.generate([fork], params, seeds=[4])
        assert forked.prompt_cached_tokens == len(a) + 2
        assert gen.cached_prefix_tokens <= budget
        # Later turns: b's episode is prefilled whole, a's and c's reuse their first turn.
        continued = [p + t.token_ids + observation for p, t in ((a, turn_a), (b, turn_b), (c, turn_c))]
        later = gen.generate(continued, params, seeds=[5, 6, 7])
        assert [x.prompt_cached_tokens for x in later] == [stored["a"], 0, stored["c"]]
        assert gen.cached_prefix_tokens <= budget
        assert_same_as_without_cache(model, tok, [fork] + continued, [4, 5, 6, 7], [forked] + later, params)
