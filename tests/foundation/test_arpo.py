"""ARPO: step entropy, the `entropy` strategy (where it branches, beam, n, refills, failed
forks), bad input, and the `arpo` estimator's soft and hard attribution through the update."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from agentrl.algorithms import arpo_hard_advantages, grpo_advantages, policy_loss, token_advantages
from agentrl.config import load_config
from agentrl.envs import TextEnv, make_info
from agentrl.generation import HFGenerator
from agentrl.models import load_model
from agentrl.rollout import EntropyStrategy, EntropyUnmeasurable, RolloutEngine, segment_entropy
from agentrl.rollout.context import RolloutContext
from agentrl.training.logprobs import token_logprobs
from agentrl.training.shared_prefix import plan_shared_prefixes
from agentrl.types import Completion, Group, SamplingParams, Step, Trajectory

VOCAB = 512


# --- step entropy --------------------------------------------------------------------------------


def test_segment_entropy_equals_the_formula_in_both_variants():
    # Two positions, k' = 2. At position 0 the sampled token is in the top 2; at position 1 it is
    # outside (log-prob below the second largest): the reference variant adds it as a third entry.
    top = [[math.log(0.6), math.log(0.3)], [math.log(0.5), math.log(0.25)]]
    sampled = [math.log(0.3), math.log(0.1)]
    completion = Completion([1, 2], sampled, "stop", "ab", top_logprobs=top)

    def h(ps):
        return -sum(p * math.log(p) for p in ps)

    strict = (h([0.6, 0.3]) + h([0.5, 0.25])) / math.log(VOCAB)
    reference = (h([0.6, 0.3]) + h([0.5, 0.25, 0.1])) / math.log(VOCAB)
    assert segment_entropy(completion, VOCAB, k=20, top_k=2, variant="strict") == pytest.approx(strict)
    assert segment_entropy(completion, VOCAB, k=20, top_k=2, variant="reference") == pytest.approx(reference)
    # Only the first k positions count; more top log-probs than k' are cut to k'.
    assert segment_entropy(completion, VOCAB, k=1, top_k=2) == pytest.approx(h([0.6, 0.3]) / math.log(VOCAB))
    wide = Completion([1], [math.log(0.6)], "stop", "a", top_logprobs=[[math.log(0.6), math.log(0.3), math.log(0.1)]])
    assert segment_entropy(wide, VOCAB, top_k=2) == pytest.approx(h([0.6, 0.3]) / math.log(VOCAB))


def test_segment_entropy_without_top_logprobs_says_what_to_do():
    with pytest.raises(EntropyUnmeasurable, match="top log-probs"):
        segment_entropy(Completion([1], [-0.1], "stop", "a"), VOCAB)


# --- the strategy on a scripted env --------------------------------------------------------------


class ToolWalk(TextEnv):
    """Every turn but the last is a tool call (info["tool_calls"]); the episode ends at
    `max_turns` or when the action says "answer"."""

    system_prompt = "Walk."
    max_turns = 4

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.path = []
        return f"Task {seed}.", make_info(anchor=None)

    def step(self, action):
        self.path.append(action.strip())
        done = len(self.path) >= self.max_turns or "answer" in action
        calls = [] if done else [{"name": "python", "arguments": {}}]
        return f"result {len(self.path)}", float(done), done, False, make_info(anchor=None, tool_calls=calls)


def entropy_of(traj_id: int, turn: int) -> list[list[float]]:
    """A top-2 table whose entropy depends on the trajectory and turn (spread over [0.05, 0.95])."""
    p = 0.05 + 0.9 * ((7 * traj_id + 3 * turn) % 10) / 9
    return [[math.log(max(p, 1 - p)), math.log(min(p, 1 - p))]] * 3


def scripted(tokenizer, answer_at=None, log=None):
    """Turn text names the trajectory and turn; top log-probs from `entropy_of`."""

    def act(episodes, params):
        if log is not None:
            log.append([(e.traj_id, e.turns) for e in episodes])
        out = []
        for e in episodes:
            text = f"t{e.traj_id}.{e.turns}" + (" answer" if answer_at is not None and e.turns >= answer_at else "")
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            top = entropy_of(e.traj_id, e.turns)
            top = (top * len(ids))[:len(ids)]
            out.append(Completion(ids, [row[0] for row in top], "eos", text + tokenizer.eos_token, top_logprobs=top))
        return out

    return act


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_model(tiny_model_dir)[1]


def run(tokenizer, strategy, tasks=1, seed=11, env=ToolWalk, **act):
    with RolloutEngine(None, tokenizer, SamplingParams(seed=seed)) as engine:
        return engine.run(env, [{"seed": s} for s in range(tasks)], strategy, policy=scripted(tokenizer, **act))


def test_branches_where_the_seeded_coin_says_with_the_entropy_probability(tokenizer):
    # beta = 2 spreads the branch probabilities over (0, 1), so both coin outcomes happen.
    def strategy():
        return EntropyStrategy(initial=3, n=40, beam=2, vocab_size=VOCAB, beta=2.0,
                               entropy_tokens=1, entropy_top_k=2)

    log = []
    group = run(tokenizer, strategy(), seed=11, log=log)[0]
    trajs = {t.traj_id: t for t in group.trajectories}
    assert len(trajs) == 40
    # The round in which each rollout generated each of its turns (from the policy's calls).
    round_of = {(traj, turn): r for r, called in enumerate(log) for traj, turn in called}
    coins = RolloutContext(1, seed=11)
    heads, tails = {}, set()
    for t in trajs.values():
        born = t.branched_from[1] if t.branched_from else 0
        h = [segment_entropy(Completion([0] * 3, [r[0] for r in entropy_of(t.traj_id, turn)], "eos", "",
                                        top_logprobs=entropy_of(t.traj_id, turn)), VOCAB, k=1, top_k=2)
             for turn in range(born, t.num_turns)]
        # A rollout is a source after each of its own turns that ended at a tool call; its
        # baseline is the entropy of its first segment.
        for i, turn in enumerate(range(born + 1, t.num_turns)):
            p = min(1.0, max(0.0, 0.5 + 2.0 * (h[i] - h[0])))
            point = (t.traj_id, turn)
            if coins.rng(0, t.traj_id, turn).random() < p:
                heads[point] = round_of[(t.traj_id, turn - 1)]
            else:
                tails.add(point)
    made = {t.branched_from for t in trajs.values() if t.branched_from}
    # Every branch was a heads; every heads made a branch, except where the group was full:
    # only in the round the last rollout was requested or after.
    last_request = round_of[(max(trajs), trajs[max(trajs)].branched_from[1] if trajs[max(trajs)].branched_from else 0)] - 1
    assert made <= set(heads) and not made & tails
    assert all(heads[p] >= last_request for p in set(heads) - made)
    assert len(made) >= 10 and len(tails) >= 10
    # A branch continues its source right after the tool result: same tokens up to there.
    for t in trajs.values():
        if t.branched_from:
            source = trajs[t.branched_from[0]]
            k = t.branched_from[1]
            end = source.steps[k - 1].observation_span[1]
            assert t.token_ids[:end] == source.token_ids[:end]
            assert t.node_path[:k] == source.node_path[:k] and t.node_path[k] != source.node_path[k]
    # Same seed, same branches.
    again = run(tokenizer, strategy(), seed=11)[0]
    assert {t.branched_from for t in again.trajectories} == {t.branched_from for t in trajs.values()}


@pytest.mark.parametrize("beam", [2, 3])
def test_beam_bounds_branches_per_source_and_round_and_the_group_stops_at_n(tokenizer, beam):
    # p0 = 1, beta = 0: every coin is heads, so only beam and n limit branching.
    strategy = EntropyStrategy(initial=2, n=9, beam=beam, vocab_size=VOCAB, p0=1.0, beta=0.0, entropy_top_k=2)
    groups = run(tokenizer, strategy, tasks=2)
    for group in groups:
        assert len(group.trajectories) == 9 and group.budget["branches"] == 7
        per_point = {}
        for t in group.trajectories:
            if t.branched_from:
                per_point[t.branched_from] = per_point.get(t.branched_from, 0) + 1
        assert max(per_point.values()) == beam - 1
        # Sources in index order: the first round's branches come from trajectories 0 and 1.
        first_round = sorted(src for (src, turn) in per_point if turn == 1)
        assert first_round == [0, 1]


def test_every_rollout_finished_short_of_n_adds_one_fresh_rollout_per_round(tokenizer):
    # Every rollout answers in its first turn: no tool call, no branch; the group reaches n
    # through fresh rollouts, one per round once all have finished.
    log = []
    strategy = EntropyStrategy(initial=2, n=5, vocab_size=VOCAB, p0=1.0, entropy_top_k=2)
    group = run(tokenizer, strategy, answer_at=0, log=log)[0]
    assert len(group.trajectories) == 5 and all(t.branched_from is None for t in group.trajectories)
    assert [len(called) for called in log] == [2, 1, 1, 1]


def test_a_failed_fork_drops_that_branch_and_the_group_goes_on(tokenizer):
    class BrokenFork(ToolWalk):
        def fork(self):
            raise RuntimeError("sandbox died")

    strategy = EntropyStrategy(initial=2, n=4, vocab_size=VOCAB, p0=1.0, beta=0.0, entropy_top_k=2)
    group = run(tokenizer, strategy, env=BrokenFork)[0]
    failed = [t for t in group.trajectories if t.infra_error]
    healthy = [t for t in group.trajectories if not t.infra_error]
    assert failed and all("sandbox died" in t.infra_error for t in failed)
    assert group.budget["infra_errors"] == len(failed)
    # The rest went on to n healthy rollouts (fresh ones where branches could not be made).
    assert len(healthy) == 4 and all(t.num_turns == ToolWalk.max_turns for t in healthy)


# --- bad input -----------------------------------------------------------------------------------


def test_a_generator_without_top_logprobs_is_refused_before_any_env_starts(tokenizer):
    class PlainGenerator:
        def generate(self, prompts, params, seeds=None):
            raise AssertionError("must not be called")

    made = []

    def make_env():
        made.append(1)
        return ToolWalk()

    with RolloutEngine(PlainGenerator(), tokenizer, SamplingParams()) as engine:
        with pytest.raises(EntropyUnmeasurable, match="PlainGenerator does not return them.*returns_top_logprobs"):
            engine.run(make_env, [{"seed": 0}], EntropyStrategy(initial=1, n=2, vocab_size=VOCAB))
    assert made == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(initial=5, n=4), "initial=5 rollouts per task must be between 1 and n=4"),
    (dict(beam=1), "beam=1 allows no branch"),
    (dict(entropy_logprobs="vllm"), "must be 'reference' or 'strict'"),
])
def test_bad_strategy_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EntropyStrategy(vocab_size=VOCAB, **kwargs)


# --- a real model ------------------------------------------------------------------------------


def test_a_real_generators_top_logprobs_drive_the_strategy(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir)
    strategy = EntropyStrategy(initial=2, n=4, vocab_size=len(tokenizer))
    sampling = SamplingParams(max_new_tokens=5, seed=2)
    with RolloutEngine(HFGenerator(model, tokenizer), tokenizer, sampling) as engine:
        group = engine.run(ToolWalk, [{"seed": 0}], strategy)[0]
    assert len(group.trajectories) == 4
    # Every measured rollout has a finite baseline and branch probabilities in [0, 1].
    assert strategy._baseline and all(0.0 <= strategy.branch_probability(k) <= 1.0 for k in strategy._baseline)
    assert all(0.0 < h < 10 * 5 / math.log(len(tokenizer)) for h in strategy._entropy.values())
    metrics = strategy.metrics()
    assert metrics["arpo/branch_points"] >= 2 and 0.0 <= metrics["arpo/branch_probability"] <= 1.0
    assert metrics["arpo/step_entropy"] > 0.0


# --- advantages ---------------------------------------------------------------------------------


def _traj(traj_id, reward, node_ids, action_len=2, obs_len=1, prompt=(1, 2, 3)):
    """A hand-built trajectory: prompt, then per turn `action_len` action tokens and `obs_len`
    observation tokens; the tokens of turn with node id n are (10 * n, 10 * n + 1, ...)."""
    token_ids, mask, steps = list(prompt), [0] * len(prompt), []
    for node in node_ids:
        start = len(token_ids)
        token_ids += [10 * node + i for i in range(action_len)]
        mask += [1] * action_len
        steps.append(Step(action_text="", action_span=(start, start + action_len), observation="",
                          reward=0.0, node_id=node, observation_span=(start + action_len, start + action_len + obs_len)))
        token_ids += [5] * obs_len
        mask += [0] * obs_len
    return Trajectory(token_ids=token_ids, loss_mask=mask, logprobs=[0.0] * len(token_ids), steps=steps,
                      prompt_len=len(prompt),
                      reward=reward, group_id=0, traj_id=traj_id)


def _groups():
    # A (nodes 1, 2) and its branch B (nodes 1, 3) share turn 1; C (nodes 4, 5) shares nothing.
    return [Group(0, {}, [_traj(0, 1.0, [1, 2]), _traj(1, 0.0, [1, 3]), _traj(2, 0.0, [4, 5])])]


def test_soft_attribution_is_grpo_over_the_tasks_rollouts():
    settings = load_config(None, ["rollout.strategy={name: entropy, initial: 2, n: 4}",
                                  "algorithm.advantage=arpo"]).algorithm
    out = token_advantages("arpo", _groups(), settings)
    values = grpo_advantages([1.0, 0.0, 0.0], [0, 0, 0])
    for adv, traj, value in zip(out, _groups()[0].trajectories, values):
        assert np.allclose(adv[np.asarray(traj.loss_mask, bool)], value)


def test_hard_attribution_gives_a_shared_turn_the_mean_once_and_the_trie_update_trains_it_once(tiny_model_dir):
    settings = load_config(None, ["algorithm.advantage=arpo", "algorithm.attribution=hard"]).algorithm
    groups = _groups()
    trajs = groups[0].trajectories
    out = token_advantages("arpo", groups, settings)
    a = grpo_advantages([1.0, 0.0, 0.0], [0, 0, 0])
    shared = (a[0] + a[1]) / 2
    # Turn 1 (node 1) sits in A and B: each copy holds the mean / 2; their own turns keep theirs.
    assert np.allclose(out[0][3:5], shared / 2) and np.allclose(out[1][3:5], shared / 2)
    assert np.allclose(out[0][6:8], a[0]) and np.allclose(out[1][6:8], a[1])
    assert np.allclose(out[2][[3, 4, 6, 7]], a[2])
    assert np.all(out[0][np.asarray(trajs[0].loss_mask) == 0] == 0)
    # The same as arpo_hard_advantages over the turns with `once`: m copies of mean / m.
    per_turn = arpo_hard_advantages(a, [[1, 2], [1, 3], [4, 5]], {n: 1 for n in range(1, 6)}, once=True)
    assert np.allclose(per_turn[0], [shared / 2, a[0]])

    # Through the trie update (the shared turn forwarded once), the gradient equals that of a
    # batch where the shared turn is one sequence's, with the mean advantage, and trained once.
    model, _ = load_model(tiny_model_dir)
    model = model.float()

    def grads(token_rows, masks, advantages, plan):
        model.zero_grad()
        ids = torch.tensor(token_rows)
        attention = torch.ones_like(ids)
        logp, _ = token_logprobs(model, ids, attention, prefix_plan=plan)
        mask = torch.tensor(masks, dtype=torch.float32)
        loss, _ = policy_loss(logp, logp.detach(), torch.tensor(np.array(advantages), dtype=torch.float32),
                              mask, agg="seq-mean-token-sum")
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    rows = [t.token_ids for t in trajs]
    plan = plan_shared_prefixes(rows, [0, 0, 0])
    assert plan.saved_tokens >= 3 + 3  # the prompt (for B and C) and A's first turn (for B)
    hard = grads(rows, [t.loss_mask for t in trajs], out, plan)
    once_masks = [trajs[0].loss_mask, [0] * 6 + trajs[1].loss_mask[6:], trajs[2].loss_mask]
    once_adv = [np.where(np.arange(9) < 6, shared, a[0]) * np.asarray(trajs[0].loss_mask),
                np.full(9, a[1]), np.full(9, a[2])]
    once = grads(rows, once_masks, once_adv, None)
    assert torch.allclose(hard, once, atol=1e-6, rtol=1e-4)
    # And it differs from soft attribution, which trains the shared turn once per rollout.
    soft = grads(rows, [t.loss_mask for t in trajs],
                 token_advantages("arpo", groups, load_config(None, ["algorithm.advantage=arpo"]).algorithm), plan)
    assert not torch.allclose(hard, soft, atol=1e-6, rtol=1e-4)
