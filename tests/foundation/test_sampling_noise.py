"""Every completion draws its own sampling noise, and one seed reproduces a rollout.

A generator seeded once per call gives row i the same uniform numbers at every turn: an episode
whose next turn looks like its last repeats itself far more often than the model's
probabilities say, and a branch that lands on its parent's row repeats its parent.
"""

from __future__ import annotations

import math

import pytest
import torch

from agentrl.envs import TextEnv, make_info
from agentrl.generation import HFGenerator
from agentrl.models import load_model
from agentrl.rollout import ChainStrategy, RolloutEngine
from agentrl.types import SamplingParams


class SayAnything(TextEnv):
    """Three turns of the same request: the prompt barely changes from one turn to the next."""

    max_turns = 3

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.turn = 0
        return "Say anything.", make_info(anchor="start")

    def step(self, action):
        self.turn += 1
        done = self.turn >= self.max_turns
        return ("" if done else "Say anything."), 0.0, done, False, make_info(anchor=self.turn)


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return load_model(tiny_model_dir)


def _rollout(policy, seed: int, tasks: int = 8, group: int = 8):
    model, tokenizer = policy
    generator = HFGenerator(model, tokenizer, max_batch_size=64)
    params = SamplingParams(temperature=1.0, max_new_tokens=3, seed=seed)
    with RolloutEngine(generator, tokenizer, params) as engine:
        return engine.run(SayAnything, [{"seed": i} for i in range(tasks)], ChainStrategy(group))


def _first_token_logprobs(model, token_ids: list[int], position: int) -> torch.Tensor:
    """log p(. | token_ids[:position]) of a fresh forward pass at temperature 1."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([token_ids[:position]])).logits[0, -1].float()
    return torch.log_softmax(logits, dim=-1)


def test_turn_to_turn_agreement_is_what_the_model_predicts(policy):
    """The first token of turn t+1 equals that of turn t as often as the model's own
    probability of that token at turn t+1 says, not (nearly) always."""
    model, _ = policy
    groups = _rollout(policy, seed=5)
    observed, predicted, variance = [], [], []
    for trajectory in (t for g in groups for t in g.trajectories):
        for before, after in zip(trajectory.steps, trajectory.steps[1:]):
            first = trajectory.token_ids[before.action_span[0]]
            start = after.action_span[0]
            p = float(_first_token_logprobs(model, trajectory.token_ids, start)[first].exp())
            observed.append(float(trajectory.token_ids[start] == first))
            predicted.append(p)
            variance.append(p * (1 - p))
    n = len(observed)
    assert n == 8 * 8 * 2
    gap = (sum(observed) - sum(predicted)) / n
    # Independent noise: the gap is a mean of n zero-mean terms; 5 standard errors + a margin.
    bound = 5 * math.sqrt(sum(variance)) / n + 0.03
    assert abs(gap) <= bound, (sum(observed) / n, sum(predicted) / n)


def test_identical_prompts_of_one_group_differ_at_every_turn(policy):
    groups = _rollout(policy, seed=1, tasks=1, group=16)
    for turn in range(3):
        actions = [t.steps[turn].action_text for t in groups[0].trajectories]
        assert len(set(actions)) > 8, actions


def test_the_same_seed_reproduces_the_rollout(policy):
    first = _rollout(policy, seed=3, tasks=4, group=4)
    again = _rollout(policy, seed=3, tasks=4, group=4)
    other = _rollout(policy, seed=4, tasks=4, group=4)
    ids = lambda groups: [t.token_ids for g in groups for t in g.trajectories]  # noqa: E731
    assert ids(first) == ids(again)
    assert ids(first) != ids(other)
    # A group's completions do not depend on the other groups in its batches.
    alone = _rollout(policy, seed=3, tasks=1, group=4)
    assert ids(alone) == ids(first)[:4]


def test_a_row_samples_from_its_own_seed_whatever_shares_its_batch(policy):
    model, tokenizer = policy
    generator = HFGenerator(model, tokenizer)
    prompt = tokenizer("What is 1 + 2?")["input_ids"]
    other = tokenizer("search the result")["input_ids"]
    params = SamplingParams(temperature=1.0, max_new_tokens=8)
    alone = generator.generate([prompt], params, seeds=[42])[0]
    mixed = generator.generate([other, prompt, prompt], params, seeds=[7, 42, 43])
    assert mixed[1].token_ids == alone.token_ids
    assert mixed[2].token_ids != alone.token_ids
    with pytest.raises(ValueError, match="one seed per prompt"):
        generator.generate([prompt], params, seeds=[1, 2])
