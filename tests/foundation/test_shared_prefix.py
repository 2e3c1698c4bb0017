"""The shared-prefix update: a group's common prompt forwarded once gives the same log-probs,
entropy and gradients as forwarding every sequence whole (tries of branched sequences:
test_prefix_trie.py)."""

from __future__ import annotations

import pytest
import torch

from agentrl.envs import make_env
from agentrl.generation import HFGenerator
from agentrl.models import attention_implementation, load_model
from agentrl.rollout import ChainStrategy, RolloutEngine
from agentrl.training import RLTrainer
from agentrl.training.batch import collate, family_micro_batches
from agentrl.training.logprobs import token_logprobs
from agentrl.training.shared_prefix import plan_shared_prefixes
from agentrl.types import Completion, SamplingParams

from .test_training import LowercaseTurns, _config


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return load_model(tiny_model_dir)


def _arithmetic():
    return make_env("agentrl/ArithmeticTryAgain-v0", digits=2, max_turns=4)


def test_plan_finds_each_groups_common_prefix():
    ids = [[1, 2, 3, 4, 5], [1, 2, 3, 9], [7, 8, 9], [1, 2, 3, 4, 5, 6]]
    plan = plan_shared_prefixes(ids, ["a", "a", "b", "a"])
    roots = [node for node in plan.nodes if node.depth == 0]
    assert [(node.start, node.length) for node in roots] == [(0, 3), (0, 3)]  # "a" shares [1, 2, 3]
    assert [plan.nodes[path[0]] for path in plan.paths] == [roots[0], roots[0], roots[1], roots[0]]
    # [1, 2, 3, 4, 5] is shared too, by rows 0 and 3; row 0 ends there, row 3 goes on with [6]
    assert plan.paths[0] == plan.paths[3][:-1]
    assert plan.forwarded_tokens == 3 + 1 + 2 + 1 + 3 and plan.saved_tokens == 18 - 10


def test_plan_shares_identical_rows_whole_and_splits_a_group_that_shares_nothing():
    same = plan_shared_prefixes([[1, 2, 3], [1, 2, 3], [1, 2, 3, 4]], [0, 0, 0])
    assert same.forwarded_tokens == 4  # identical rows read the same logits: nothing of their own
    split = plan_shared_prefixes([[1, 2, 3], [5, 2, 3], [6, 6]], [0, 0, 1], min_saved_tokens=0)
    assert [node.length for node in split.nodes] == [3, 3, 2] and split.saved_tokens == 0
    assert plan_shared_prefixes([[1, 2, 3], [5, 2, 3]], [0, 0]) is None  # nothing to save
    with pytest.raises(ValueError, match="at least 2"):
        plan_shared_prefixes([[1]], [0])


def test_family_micro_batches_keep_groups_together():
    lengths = [10, 30, 11, 31, 12, 32, 50, 51, 52, 53, 54]
    families = ["a", "b", "a", "b", "a", "b", "c", "c", "c", "c", "c"]
    chunks = family_micro_batches(range(len(lengths)), lengths, families, size=4)
    assert sorted(i for chunk in chunks for i in chunk) == list(range(len(lengths)))
    assert all(len(chunk) <= 4 for chunk in chunks)
    assert chunks[0] == [0, 2, 4] and chunks[1] == [1, 3, 5]  # whole groups, shortest first
    assert chunks[2:] == [[6, 7, 8, 9], [10]]  # a group larger than a chunk fills its own


@pytest.mark.parametrize("scripted", [False, True], ids=["sampled", "identical-actions"])
def test_shared_prefix_logprobs_entropy_and_gradients_equal_a_whole_forward(policy, scripted):
    model, tokenizer = policy
    generator = HFGenerator(model, tokenizer, max_batch_size=16)
    with RolloutEngine(generator, tokenizer, SamplingParams(temperature=1.0, max_new_tokens=12, seed=3)) as engine:
        if scripted:  # every rollout writes the same turns: groups share action tokens too
            def act(episodes, params):
                return [_scripted_turn(e, tokenizer) for e in episodes]
            groups = engine.run(_arithmetic, [{"seed": s} for s in range(2)], ChainStrategy(3), policy=act)
        else:
            groups = engine.run(_arithmetic, [{"seed": s} for s in range(3)], ChainStrategy(4))
    trajectories = [t for g in groups for t in g.trajectories]
    assert any(t.num_turns > 1 for t in trajectories)
    batch = collate(trajectories, None, tokenizer.pad_token_id)
    plan = plan_shared_prefixes([t.token_ids for t in trajectories], [t.group_id for t in trajectories])
    assert plan is not None and sum(node.depth == 0 for node in plan.nodes) == len(groups)
    if scripted:  # the shared prefix runs into the actions, which are trained on
        prefix = plan.nodes[0].length
        assert batch.loss_mask[0, :prefix].sum() > 0
    mask = batch.attention_mask.bool()
    results = []
    model.train()
    for use_plan in (None, plan):
        model.zero_grad(set_to_none=True)
        logprobs, entropy = token_logprobs(model, batch.input_ids, batch.attention_mask,
                                           with_entropy=True, prefix_plan=use_plan)
        # a loss that weights each row differently, so a wrong row mapping shows in the gradient
        weights = torch.arange(1, len(trajectories) + 1, dtype=torch.float32)[:, None]
        (logprobs * batch.loss_mask * weights).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results.append((logprobs.detach(), entropy, grads))
    model.eval()
    (whole_lp, whole_entropy, whole_grads), (shared_lp, shared_entropy, shared_grads) = results
    assert torch.allclose(whole_lp[mask], shared_lp[mask], atol=1e-5)
    assert torch.allclose(whole_entropy[mask], shared_entropy[mask], atol=1e-5)
    assert whole_grads.abs().max() > 0
    assert (whole_grads - shared_grads).abs().max() < 1e-5 * whole_grads.abs().max()


def _scripted_turn(episode, tokenizer):
    """A wrong answer first, then the right one."""
    text = "<answer>-1</answer>" if episode.turns == 0 else episode.env.oracle_action()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return Completion(ids, [-0.5] * len(ids), "eos", text + tokenizer.eos_token)


def _capture_gradients(trainer) -> list[torch.Tensor]:
    """The flattened gradients at every optimizer step of `trainer`."""
    captured = []

    def before_step(optimizer, args, kwargs):
        captured.append(torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None]))

    trainer.optimizer.register_step_pre_hook(before_step)
    return captured


@pytest.mark.parametrize("settings", [{}, {"algorithm.kl_coef": 0.1}], ids=["grpo", "grpo+kl"])
def test_an_rl_iteration_computes_the_same_gradients_with_and_without_the_shared_prefix(
        tmp_path, tiny_model_dir, settings):
    gradients, metrics = {}, {}
    for shared in (False, True):
        name = f"shared-{shared}"
        config = _config(tmp_path, name, **{"train.iterations": 1, "rollout.max_new_tokens": 6,
                                            "train.micro_batch_size": 12,
                                            "train.shared_prefix": shared, **settings})
        model, tokenizer = load_model(tiny_model_dir)
        trainer = RLTrainer(config, tmp_path / name, model, tokenizer, LowercaseTurns)
        captured = _capture_gradients(trainer)
        metrics[shared] = trainer.train_iteration()
        gradients[shared] = captured[0]
    assert metrics[True]["perf/update_tokens_shared"] > 0
    assert metrics[False]["perf/update_tokens_shared"] == 0
    assert metrics[True]["reward/mean"] == metrics[False]["reward/mean"]  # the same rollouts
    assert metrics[True]["loss/total"] == pytest.approx(metrics[False]["loss/total"], abs=1e-5)
    scale = gradients[False].abs().max()
    assert scale > 0 and (gradients[True] - gradients[False]).abs().max() < 1e-5 * scale


def test_the_update_runs_with_its_own_attention_kernel_and_sampling_keeps_the_models(tmp_path, tiny_model_dir):
    config = _config(tmp_path, "eager", **{"train.iterations": 1, "train.attention": "eager"})
    model, tokenizer = load_model(tiny_model_dir)
    loaded = model.config._attn_implementation
    assert loaded != "eager"
    trainer = RLTrainer(config, tmp_path / "eager", model, tokenizer, LowercaseTurns)
    seen = []
    update = trainer._update

    def spy(*args, **kwargs):
        seen.append(model.config._attn_implementation)
        return update(*args, **kwargs)

    trainer._update = spy
    metrics = trainer.train_iteration()
    assert seen == ["eager"] and metrics["policy/optimizer_steps"] >= 1
    assert model.config._attn_implementation == loaded  # sampling runs the model's own kernel


def test_an_attention_kernel_needs_a_hugging_face_model():
    with pytest.raises(ValueError, match="train.attention=model"):
        with attention_implementation(torch.nn.Linear(2, 2), "eager"):
            pass
