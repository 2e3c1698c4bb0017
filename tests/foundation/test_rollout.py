"""Token-space multi-turn rollouts: the classic bugs of multi-turn RL, each as a test.

- after several turns the token ids equal a fresh render of the whole conversation;
- only sampled tokens have loss mask 1, and their behaviour log-probs are aligned;
- behaviour log-probs equal a fresh forward pass of the same weights.
"""

from __future__ import annotations

import pytest
import torch

from agentrl.envs import make_env
from agentrl.generation import HFGenerator
from agentrl.models import load_model
from agentrl.rollout import ChainStrategy, ChatTemplater, RolloutEngine, TemplateNotAppendSafe
from agentrl.training.batch import collate
from agentrl.training.logprobs import token_logprobs
from agentrl.types import Completion, Message, SamplingParams


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return load_model(tiny_model_dir)


def _multi_turn_env():
    return make_env("agentrl/ArithmeticTryAgain-v0", digits=2, max_turns=4)


def _scripted(tokenizer):
    """Wrong, malformed (stopped without EOS), wrong, right: exercises every delta path."""
    script = ["<answer>-1</answer>", "hmm, not sure", "<answer>-2</answer>", None]

    def act(episodes, params):
        out = []
        for episode in episodes:
            text = script[episode.turns] or episode.env.oracle_action()
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            eos = episode.turns != 1
            if eos:
                ids = ids + [tokenizer.eos_token_id]
            out.append(Completion(ids, [-0.5] * len(ids), "eos" if eos else "stop",
                                  text + (tokenizer.eos_token if eos else "")))
        return out

    return act


def test_token_ids_equal_a_fresh_render_after_several_turns(policy):
    _, tokenizer = policy
    with RolloutEngine(None, tokenizer, SamplingParams(), check_template=True) as engine:
        groups = engine.run(_multi_turn_env, [{"seed": 11}], ChainStrategy(2), policy=_scripted(tokenizer))
    trajectory = groups[0].trajectories[0]
    assert trajectory.num_turns == 4 and trajectory.success
    roles = [m.role for m in trajectory.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user", "assistant", "user", "assistant"]
    templater = ChatTemplater(tokenizer)
    # the exact ids of a fresh render of the whole conversation, not only the text
    assert trajectory.token_ids == templater.render_ids(trajectory.messages, add_generation_prompt=False)


def test_only_sampled_tokens_have_loss_mask_one(policy):
    _, tokenizer = policy
    with RolloutEngine(None, tokenizer, SamplingParams()) as engine:
        groups = engine.run(_multi_turn_env, [{"seed": 5}], ChainStrategy(1), policy=_scripted(tokenizer))
    t = groups[0].trajectories[0]
    assert len(t.token_ids) == len(t.loss_mask) == len(t.logprobs)
    sampled = set()
    for step in t.steps:
        start, end = step.action_span
        sampled.update(range(start, end))
        assert tokenizer.decode(t.token_ids[start:end]).startswith(step.action_text)
    assert {i for i, m in enumerate(t.loss_mask) if m == 1} == sampled
    assert all(t.logprobs[i] == -0.5 for i in sampled)
    assert all(t.logprobs[i] == 0.0 for i in range(len(t.token_ids)) if i not in sampled)
    assert t.prompt_len == t.steps[0].action_span[0]


def test_behaviour_logprobs_equal_a_fresh_forward_pass(policy):
    model, tokenizer = policy
    generator = HFGenerator(model, tokenizer, max_batch_size=16)
    sampling = SamplingParams(temperature=0.8, max_new_tokens=12, seed=3)
    with RolloutEngine(generator, tokenizer, sampling, check_template=True) as engine:
        groups = engine.run(_multi_turn_env, [{"seed": s} for s in range(3)], ChainStrategy(4))
    trajectories = [t for g in groups for t in g.trajectories]
    assert any(t.num_turns > 1 for t in trajectories), "needs multi-turn trajectories"
    batch = collate(trajectories, None, tokenizer.pad_token_id)
    with torch.no_grad():
        fresh, _ = token_logprobs(model, batch.input_ids, batch.attention_mask, temperature=0.8)
    diff = ((fresh - batch.old_logprobs).abs() * batch.loss_mask).max().item()
    assert diff < 1e-4
    assert batch.loss_mask.sum() > 0
    # Later turns came from the prefix cache (only the observations were prefilled), and each
    # group's first prompt was prefilled once for its 4 rollouts.
    cached = sum(g.budget["tokens/prompt_cached"] for g in groups)
    assert generator.reused_prompt_tokens > 0
    # (>=: two rollouts that happen to write the same turn also share their next prompt)
    assert generator.shared_prompt_tokens >= sum(3 * g.trajectories[0].prompt_len for g in groups)
    assert cached == generator.reused_prompt_tokens + generator.shared_prompt_tokens


def test_the_prefix_cache_changes_no_token_of_a_rollout(policy):
    model, tokenizer = policy
    sampling = SamplingParams(temperature=0.0, max_new_tokens=12)
    runs = {}
    for budget in (0, 100_000):
        generator = HFGenerator(model, tokenizer, max_batch_size=5, prefix_cache_tokens=budget)
        with RolloutEngine(generator, tokenizer, sampling) as engine:
            groups = engine.run(_multi_turn_env, [{"seed": s} for s in range(6)], ChainStrategy(2))
        runs[budget] = [t.token_ids for g in groups for t in g.trajectories]
        assert (generator.reused_prompt_tokens > 0) == (budget > 0)
    assert max(len(ids) for ids in runs[0]) > 40
    assert runs[100_000] == runs[0]


def test_groups_share_the_task_and_report_budgets(policy):
    model, tokenizer = policy
    generator = HFGenerator(model, tokenizer)
    with RolloutEngine(generator, tokenizer, SamplingParams(max_new_tokens=6, seed=0)) as engine:
        groups = engine.run(_multi_turn_env, [{"seed": 1}, {"seed": 2}], ChainStrategy(3))
    assert [g.group_id for g in groups] == [0, 1]
    for group in groups:
        assert len(group.trajectories) == 3
        assert len({t.messages[1].content for t in group.trajectories}) == 1  # same question
        assert [t.traj_id for t in group.trajectories] == [0, 1, 2]
        assert group.budget["tokens/generated"] == sum(t.num_action_tokens for t in group.trajectories)
        assert group.budget["time/generate"] > 0


def test_a_template_that_is_not_append_safe_fails_loudly(policy):
    _, tokenizer = policy
    templater = ChatTemplater(tokenizer)
    messages = [Message("user", "hi"), Message("assistant", "yo")]
    ids = templater.render_ids(messages, add_generation_prompt=False)
    templater.check_append(ids, messages, add_generation_prompt=False, exact_ids=True)
    with pytest.raises(TemplateNotAppendSafe, match="not append-safe"):
        templater.check_append(ids[:-3], messages, add_generation_prompt=False)


def test_a_crashing_env_step_ends_that_episode_not_the_batch(policy):
    _, tokenizer = policy

    class Exploding(type(make_env("agentrl/Arithmetic-v0"))):
        def step(self, action):
            raise ValueError("boom")

    with RolloutEngine(None, tokenizer, SamplingParams()) as engine:
        groups = engine.run(lambda: Exploding(), [{"seed": 0}], ChainStrategy(2),
                            policy=_scripted(tokenizer))
    t = groups[0].trajectories[0]
    assert t.info["truncated"] and not t.steps[0].action_valid
    assert "boom" in t.steps[0].observation


def test_demonstrations_with_mistakes_mask_the_mistaken_turns(policy):
    from agentrl.rollout import collect_demonstrations

    _, tokenizer = policy
    demos = collect_demonstrations(_multi_turn_env, range(40), tokenizer, mistake_rate=0.5, seed=1)
    recovered = [t for t in demos if t.num_turns > 1]
    assert recovered and len(recovered) < len(demos)
    for t in demos:
        assert t.success  # every demonstration ends with the oracle's answer
        *mistakes, last = t.steps
        assert all(not s.info["success"] for s in mistakes)
        assert all(sum(t.loss_mask[a:b]) == 0 for a, b in (s.action_span for s in mistakes))
        start, end = last.action_span
        assert sum(t.loss_mask) == end - start == sum(t.loss_mask[start:end])


def test_demonstrations_can_make_one_mistake_anywhere_and_recover(policy):
    """mistake_at="any": a failed search in the middle of a plan, then the plan goes on."""
    from agentrl.envs.tasks.search_qa import SearchQA
    from agentrl.rollout import collect_demonstrations

    _, tokenizer = policy
    demos = collect_demonstrations(lambda: SearchQA(worlds="per_episode", topk=1, max_turns=5, name_pool=64),
                                   range(60), tokenizer, mistake_rate=0.5, mistake_at="any", seed=1)
    made = [t for t in demos if any("No results." in s.observation for s in t.steps)]
    assert made and len(made) < len(demos)
    assert any(t.steps[0].action_valid and "No results." not in t.steps[0].observation for t in made)
    for t in demos:
        assert t.success  # every demonstration still ends with the right answer
        failed = [s for s in t.steps if "No results." in s.observation]
        assert len(failed) <= 1
        for step in failed:  # the mistaken search is context, never a target
            start, end = step.action_span
            assert sum(t.loss_mask[start:end]) == 0
        trained = [s for s in t.steps if s not in failed]
        assert all(sum(t.loss_mask[a:b]) == b - a for a, b in (s.action_span for s in trained))


def test_encoding_uses_the_same_ids_as_the_tokenizer_and_renders_are_memoised(policy):
    _, tokenizer = policy
    templater = ChatTemplater(tokenizer)
    messages = [Message("system", "Be brief."), Message("user", "What is 12 + 30?"),
                Message("assistant", "<answer>42</answer>"), Message("user", "Correct. Ünïcode too.")]
    text = templater.render_text(messages, add_generation_prompt=True)
    assert "<|im_start|>" in text  # special tokens go through the fast path too
    assert templater.encode(text) == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert templater.render_text(messages, add_generation_prompt=True) is text  # memoised
    other = [*messages[:-1], Message("user", "Wrong.")]
    assert templater.render_text(other, add_generation_prompt=True) != text
    assert templater.render_text(messages, add_generation_prompt=False) == tokenizer.apply_chat_template(
        [m.to_dict() for m in messages], add_generation_prompt=False, tokenize=False)
