"""The trie forward of the update: sequences that share turns at several depths (branched
rollouts) forward each distinct token once, with the log-probs, entropy and gradients of
forwarding every sequence whole."""

from __future__ import annotations

import logging

import pytest
import torch

from agentrl.models import attention_implementation, load_model
from agentrl.training.logprobs import token_logprobs
from agentrl.training.shared_prefix import plan_shared_prefixes, shared_prefix_logits

PAD = 0


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    model, _ = load_model(tiny_model_dir)  # float32
    return model


def _turns(seed: int, *lengths: int) -> list[list[int]]:
    """Random token runs of the given lengths; each starts with its own token (3 + its index), so
    two different runs never share a first token (a branch point is where the test says)."""
    generator = torch.Generator().manual_seed(seed)
    return [[3 + k] + torch.randint(20, 290, (n - 1,), generator=generator).tolist() for k, n in enumerate(lengths)]


def _branched_tree() -> tuple[list[list[int]], list[str]]:
    """A Tree-GRPO-shaped group: a prompt and turn 1 that every rollout shares, a chain and two
    branches after turn 1, one branch splitting again after turn 2; plus a row of another group
    that starts with the very same prompt (different groups must not share)."""
    prompt, turn1, chain2, branch2a, branch2b, chain3, a3, a3_again, b3, other = _turns(
        0, 12, 6, 7, 5, 8, 6, 4, 5, 7, 9)
    branch2a = chain2[:2] + branch2a  # a branch whose turn starts like the chain's: a mid-turn split
    rows = [
        prompt + turn1 + chain2 + chain3,
        prompt + turn1 + branch2a + a3,
        prompt + turn1 + branch2a + a3_again,
        prompt + turn1 + branch2b + b3,
        prompt + other,
    ]
    return rows, ["tree", "tree", "tree", "tree", "other"]


def _batch(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), PAD)
    attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, ids in enumerate(rows):
        input_ids[b, :len(ids)] = torch.tensor(ids)
        attention_mask[b, :len(ids)] = 1
    return input_ids, attention_mask


def _distinct_tokens(rows: list[list[int]], keys: list[str]) -> int:
    """Tokens of the trie counted from first principles: distinct (group, prefix) pairs."""
    return len({(key, tuple(ids[:i + 1])) for ids, key in zip(rows, keys) for i in range(len(ids))})


def _forward_and_backward(model, input_ids, attention_mask, plan):
    """Log-probs, entropy and the flat parameter gradients of a loss that weights every row and
    position differently, so a token read from the wrong node shows."""
    model.zero_grad(set_to_none=True)
    logprobs, entropy = token_logprobs(model, input_ids, attention_mask, with_entropy=True, entropy_grad=True,
                                       prefix_plan=plan)
    weights = torch.linspace(0.5, 2.0, input_ids.numel()).reshape(input_ids.shape) * attention_mask
    ((logprobs + 0.1 * entropy) * weights).sum().backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    return logprobs.detach(), entropy.detach(), grads


def _assert_trie_equals_plain(model, rows, keys, attention="eager", **plan_options):
    plan = plan_shared_prefixes(rows, keys, min_saved_tokens=0, **plan_options)
    input_ids, attention_mask = _batch(rows)
    mask = attention_mask.bool()
    mask[:, 0] = False  # position 0 has no context: 0 in both
    with attention_implementation(model, attention):
        plain = _forward_and_backward(model, input_ids, attention_mask, None)
        trie = _forward_and_backward(model, input_ids, attention_mask, plan)
    (plain_lp, plain_entropy, plain_grads), (trie_lp, trie_entropy, trie_grads) = plain, trie
    assert torch.allclose(plain_lp[mask], trie_lp[mask], atol=2e-6, rtol=0)
    assert torch.allclose(plain_entropy[mask], trie_entropy[mask], atol=2e-6, rtol=0)
    scale = plain_grads.abs().max()
    assert scale > 0
    assert (plain_grads - trie_grads).abs().max() < 2e-6 * scale
    return plan


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_a_branched_tree_gives_the_log_probs_entropy_and_gradients_of_a_plain_forward(policy, attention):
    rows, keys = _branched_tree()
    plan = _assert_trie_equals_plain(policy, rows, keys, attention)
    # roots: the tree's (prompt + turn 1) and the other group's own row
    assert sorted(node.length for node in plan.nodes if node.depth == 0) == [12 + 6, 12 + 9]
    assert plan.levels == 4  # root, chain/branch split (mid-turn), then the branch's own split
    assert len(plan.paths[1]) == 4 and plan.paths[1][:3] == plan.paths[2][:3]


def test_forwarded_tokens_are_the_distinct_trie_tokens(policy):
    rows, keys = _branched_tree()
    plan = plan_shared_prefixes(rows, keys)
    plain = sum(len(r) for r in rows)
    assert plan.forwarded_tokens == _distinct_tokens(rows, keys)
    assert plan.plain_tokens == plain
    assert plan.saved_tokens == plain - plan.forwarded_tokens
    # the same tree with every row in its own group shares nothing
    assert plan_shared_prefixes(rows, range(len(rows))) is None


@pytest.mark.parametrize("case", ["one-row", "identical", "prefix-of-another", "differ-at-token-0",
                                  "prefix-and-identical-in-two-groups"])
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_degenerate_tries_equal_a_plain_forward(policy, case, attention):
    a, b, c = _turns(1, 9, 5, 6)
    rows, keys = {
        "one-row": ([a + b], [0]),
        "identical": ([a + b, a + b, a + b], [0, 0, 0]),
        # the shorter row ends inside the longer row's path: no token of its own
        "prefix-of-another": ([a + b + c, a, a + b], [0, 0, 0]),
        "differ-at-token-0": ([a + b, b + a, c + a], [0, 0, 0]),
        "prefix-and-identical-in-two-groups": ([a + b, a, a + b, a + b + c, a], [0, 0, 1, 1, 1]),
    }[case]
    plan = _assert_trie_equals_plain(policy, rows, keys, attention)
    assert plan.forwarded_tokens == _distinct_tokens(rows, keys)
    if case == "identical":
        assert len(plan.nodes) == 1 and plan.saved_tokens == 2 * len(a + b)
    if case == "prefix-of-another":
        assert plan.paths[1] == plan.paths[0][:1] and plan.saved_tokens == 2 * len(a) + len(b)
    if case == "differ-at-token-0":
        assert plan.levels == 1 and plan.saved_tokens == 0


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_max_levels_bounds_the_forward_passes_and_stays_exact(policy, levels):
    rows, keys = _branched_tree()
    plan = _assert_trie_equals_plain(policy, rows, keys, max_levels=levels)
    assert plan.levels == levels
    full = plan_shared_prefixes(rows, keys)
    plain = sum(len(r) for r in rows)
    if levels == 1:  # nothing shared: each row is a root
        assert plan.forwarded_tokens == plain
    if levels == 2:  # each group's common prefix once, every row's rest on its own
        assert plan.forwarded_tokens == 18 + 21 + sum(len(r) - 18 for r in rows[:4])
    assert plain > plan.forwarded_tokens >= full.forwarded_tokens or levels == 1


def test_plan_errors_name_the_cause():
    with pytest.raises(ValueError, match="at least 2"):
        plan_shared_prefixes([[1]], [0])
    with pytest.raises(ValueError, match="one key"):
        plan_shared_prefixes([[1, 2], [1, 3]], [0])
    with pytest.raises(ValueError, match="max_levels"):
        plan_shared_prefixes([[1, 2], [1, 3]], [0, 0], max_levels=0)


def test_a_plan_made_for_other_rows_is_refused(policy):
    rows, keys = _branched_tree()
    plan = plan_shared_prefixes(rows, keys)
    input_ids, attention_mask = _batch(rows[::-1])
    with pytest.raises(ValueError, match="in its row order"):
        shared_prefix_logits(policy, input_ids, attention_mask, plan)


class _NoCacheLM(torch.nn.Module):
    """A causal LM whose forward takes only ids and a mask (no cache, no positions)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def test_a_model_without_a_cache_path_falls_back_to_a_plain_forward(policy, caplog):
    rows, keys = _branched_tree()
    plan = plan_shared_prefixes(rows, keys)
    input_ids, attention_mask = _batch(rows)
    wrapped = _NoCacheLM(policy)
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        fallback, _ = token_logprobs(wrapped, input_ids, attention_mask, prefix_plan=plan)
        plain, _ = token_logprobs(policy, input_ids, attention_mask)
    assert torch.equal(fallback, plain)
    assert "forwards every sequence whole" in caplog.text


def test_tree_grpo_rollouts_forward_each_shared_turn_once(tiny_model_dir):
    """Real branched rollouts (2 trees x (chain + 2 branches) per task): the trie shares every
    turn that leaves share by node id, and the update's log-probs and gradients are unchanged."""
    from agentrl.envs import make_env
    from agentrl.generation import HFGenerator
    from agentrl.rollout import RolloutEngine, TreeStrategy
    from agentrl.types import SamplingParams

    model, tokenizer = load_model(tiny_model_dir)
    generator = HFGenerator(model, tokenizer, max_batch_size=16)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=8, seed=5)
    with RolloutEngine(generator, tokenizer, sampling) as engine:
        groups = engine.run(lambda: make_env("agentrl/ArithmeticTryAgain-v0", digits=2, max_turns=4),
                            [{"seed": s} for s in range(2)], TreeStrategy(m=2, n=2, l=1))
    leaves = [t for g in groups for t in g.trajectories]
    rows, keys = [t.token_ids for t in leaves], [t.group_id for t in leaves]
    plan = plan_shared_prefixes(rows, keys)
    assert plan.forwarded_tokens == _distinct_tokens(rows, keys) < plan.plain_tokens
    # two leaves whose node paths start alike share those turns' tokens, so the trie does too
    shared_turns = 0
    for a in range(len(leaves)):
        for b in range(a + 1, len(leaves)):
            turns = 0
            while (turns < min(leaves[a].num_turns, leaves[b].num_turns)
                   and leaves[a].node_path[turns] == leaves[b].node_path[turns]):
                turns += 1
            if leaves[a].group_id != leaves[b].group_id or turns == 0:
                continue
            shared_turns += 1
            turn_end = leaves[a].steps[turns - 1].observation_span[1] or leaves[a].steps[turns - 1].action_span[1]
            common = set(plan.paths[a]) & set(plan.paths[b])
            assert sum(plan.nodes[n].length for n in common) >= turn_end
    assert shared_turns > 0 and len(leaves) == 2 * 2 * 3
    _assert_trie_equals_plain(model, rows, keys, "sdpa")
