"""Branched rollouts: the engine's `branch(episode, at_turn=k)`, node ids and paths, the tree
strategy (Tree-GRPO), budgets, and what happens with envs that cannot fork or whose fork fails.

The envs here keep their whole state in plain attributes, so "the branch's env state equals the
parent's at the node" is a comparison of those attributes.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from agentrl.algorithms import token_advantages, tree_grpo_advantages
from agentrl.config import load_config
from agentrl.envs import TextEnv, make_info
from agentrl.envs.base import EnvForkError
from agentrl.generation import HFGenerator
from agentrl.models import load_model
from agentrl.rollout import ChainStrategy, RolloutEngine
from agentrl.rollout.context import BranchError, RolloutContext
from agentrl.rollout.tree_strategy import TreeStrategy
from agentrl.types import Completion, Group, SamplingParams, Step, Trajectory


class Walk(TextEnv):
    """Each turn's action is appended to the state; the episode ends after `max_turns` turns
    or at "stop". Reward 1 when the actions contained "good"."""

    system_prompt = "Walk."
    max_turns = 3

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.seed_, self.path, self.draws = seed, [], []
        return f"Task {seed}.", make_info(anchor=(seed, 0))

    def step(self, action):
        self.path.append(action.strip())
        # Env randomness: a branch must continue the parent's random stream, not restart it.
        self.draws.append(int(self.np_random.integers(1_000_000)))
        done = len(self.path) >= self.max_turns or "stop" in action
        reward = float(done and any("good" in a for a in self.path))
        return f"at {len(self.path)}: {self.draws[-1]}", reward, done, False, \
            make_info(anchor=(self.seed_, len(self.path)), success=bool(reward))

    def state(self):
        return (self.seed_, list(self.path), list(self.draws), self.np_random.bit_generator.state)


class WalkWithoutFork(Walk):
    """Cannot copy itself: branches replay its actions on a fresh env."""

    def fork(self):
        raise EnvForkError("WalkWithoutFork keeps no copyable state")


class NondeterministicWalk(WalkWithoutFork):
    """Cannot fork, and its observations change from one run to the next: cannot branch."""

    runs = 0

    def step(self, action):
        NondeterministicWalk.runs += 1
        observation, *rest = super().step(action)
        return f"{observation} (run {NondeterministicWalk.runs})", *rest


class BrokenForkWalk(Walk):
    """Its forks after turn 1 fail the way a dead sandbox does (any exception but
    EnvForkError)."""

    def fork(self):
        if len(self.path) >= 1:
            raise RuntimeError("sandbox died")
        return super().fork()


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return load_model(tiny_model_dir)


def scripted(tokenizer):
    """A policy whose turn text names its trajectory and turn, with log-probs that differ per
    trajectory, so a wrongly copied prefix shows."""

    def act(episodes, params):
        out = []
        for episode in episodes:
            text = f"t{episode.traj_id}.{episode.turns}" + (" good" if episode.traj_id % 2 else "")
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            logprobs = [-0.01 * (episode.traj_id + 1) * (i + 1) for i in range(len(ids))]
            out.append(Completion(ids, logprobs, "eos", text + tokenizer.eos_token))
        return out

    return act


def run_tree(tokenizer, env_cls=Walk, tasks=2, strategy=None, seed=7, **engine_kwargs):
    strategy = strategy or TreeStrategy(m=2, n=2, l=1)
    with RolloutEngine(None, tokenizer, SamplingParams(seed=seed), **engine_kwargs) as engine:
        return engine.run(env_cls, [{"seed": s} for s in range(tasks)], strategy, policy=scripted(tokenizer))


# --- branch(): the prefix and the env state -----------------------------------------------------


def test_a_branch_copies_the_prefix_exactly_and_holds_the_parents_env_state(policy):
    _, tokenizer = policy
    model, _ = policy
    generator = HFGenerator(model, tokenizer)
    engine = RolloutEngine(generator, tokenizer, SamplingParams(max_new_tokens=6, seed=3))
    rollout = RolloutContext(1, seed=3)
    parent = engine._start(Walk, [{"seed": 5}], {0: None}, rollout, _budgets(),
                           [rollout.spawn(0)])[0]
    snapshots = []
    for _ in range(3):
        engine._round([parent], engine.sampling, _budgets(), engine._generate, rollout)
        snapshots.append(parent.env.fork().state() if not parent.done else None)
        if parent.done:
            break
        engine._keep_forks([parent], rollout, _budgets())
    assert parent.turns == 3
    for k in (0, 1, 2):
        branch = engine._start(Walk, [{"seed": 5}], {0: None}, rollout, _budgets(),
                               [rollout.branch(parent, at_turn=k)])[0]
        end = parent.steps[k - 1].observation_span[1] if k else parent.prompt_len
        assert branch.token_ids == parent.token_ids[:end]
        assert branch.loss_mask == parent.loss_mask[:end]
        assert branch.logprobs == parent.logprobs[:end]
        assert branch.node_path == parent.node_path[:k]
        assert branch.branched_from == (parent.traj_id, k) and branch.tree_id == parent.tree_id
        assert branch.env.state() == (snapshots[k - 1] if k else _fresh_state(5))
        # The branch goes on from there, independently of the parent.
        engine._round([branch], engine.sampling, _budgets(), engine._generate, rollout)
        assert branch.turns == k + 1 and parent.turns == 3
        assert branch.steps[-1].node_id not in parent.node_path
    engine.close()


def _fresh_state(seed):
    env = Walk()
    env.reset(seed=seed)
    return env.state()


def _budgets():
    from collections import defaultdict

    return defaultdict(lambda: defaultdict(float))


def test_branch_of_a_turn_that_does_not_exist_names_the_turns_there_are(policy):
    _, tokenizer = policy
    groups_holder = {}

    class Probe(ChainStrategy):
        def after_round(self, taken, rollout):
            episode = taken[0][0]
            if episode.done and "error" not in groups_holder:
                with pytest.raises(ValueError) as excinfo:
                    rollout.branch(episode, at_turn=episode.turns)
                groups_holder["error"] = str(excinfo.value)
            return []

    with RolloutEngine(None, tokenizer, SamplingParams()) as engine:
        engine.run(Walk, [{"seed": 0}], Probe(1), policy=scripted(tokenizer))
    assert groups_holder["error"] == ("branch(at_turn=3): episode 0/0 has 3 turn(s) and is finished; "
                                      "branch at a turn in 0..2")


# --- the tree strategy ---------------------------------------------------------------------------


def test_tree_strategy_grows_m_trees_of_1_plus_l_n_leaves_whose_node_paths_form_trees(policy):
    _, tokenizer = policy
    groups = run_tree(tokenizer, strategy=TreeStrategy(m=2, n=2, l=2), tasks=3)
    for group in groups:
        trajs = group.trajectories
        assert Counter(t.tree_id for t in trajs) == {0: 5, 1: 5}  # 1 + l*n leaves per tree
        assert len({t.traj_id for t in trajs}) == len(trajs)
        parent_of: dict[int, int] = {}
        tree_of: dict[int, int] = {}
        span_text: dict[int, list[int]] = {}
        for t in trajs:
            assert t.node_path == tuple(s.node_id for s in t.steps)
            for depth, (node, step) in enumerate(zip(t.node_path, t.steps)):
                parent = t.node_path[depth - 1] if depth else 0
                assert parent_of.setdefault(node, parent) == parent  # one parent per node
                assert tree_of.setdefault(node, t.tree_id) == t.tree_id  # no node in two trees
                tokens = t.token_ids[step.action_span[0]:step.observation_span[1]]
                assert span_text.setdefault(node, tokens) == tokens  # same node, same tokens
        # Branches share turns: fewer distinct nodes than turns over all leaves.
        assert len(parent_of) < sum(t.num_turns for t in trajs)


def test_tree_budgets_add_up_and_prefix_turns_are_not_stepped_again(policy):
    _, tokenizer = policy
    groups = run_tree(tokenizer, strategy=TreeStrategy(m=2, n=2, l=1), tasks=2)
    for group in groups:
        trajs, budget = group.trajectories, group.budget
        distinct_nodes = {s.node_id for t in trajs for s in t.steps}
        assert budget["env_steps"] == len(distinct_nodes)  # each node's turn stepped once
        generated = {s.node_id: s.action_span[1] - s.action_span[0] for t in trajs for s in t.steps}
        assert budget["tokens/generated"] == sum(generated.values())
        assert budget["branches"] == 2 * 2 and budget["trajectories"] == len(trajs) == 6
        assert budget.get("branches/replayed", 0) == 0
        assert budget["time/branch"] > 0 and budget["time/reset"] > 0


def test_k_keeps_k_leaves_per_tree_and_the_seed_fixes_the_trees(policy):
    _, tokenizer = policy
    strategy = TreeStrategy(m=2, n=3, l=1, k=2)
    first = run_tree(tokenizer, strategy=strategy, tasks=2, seed=11)
    again = run_tree(tokenizer, strategy=TreeStrategy(m=2, n=3, l=1, k=2), tasks=2, seed=11)
    other = run_tree(tokenizer, strategy=TreeStrategy(m=2, n=3, l=1, k=2), tasks=2, seed=12)
    for group in first:
        assert Counter(t.tree_id for t in group.trajectories) == {0: 2, 1: 2}
        assert group.budget["trajectories/sampled"] == 2 * 4
    paths = lambda groups: [[t.node_path for t in g.trajectories] for g in groups]  # noqa: E731
    assert paths(first) == paths(again)
    assert paths(first) != paths(other)


def test_an_env_that_cannot_fork_is_replayed_exactly_and_counted(policy):
    _, tokenizer = policy
    forked = run_tree(tokenizer, env_cls=Walk, tasks=2)
    replayed = run_tree(tokenizer, env_cls=WalkWithoutFork, tasks=2)
    for a, b in zip(forked, replayed):
        # The same trees: replaying reproduces the env's state (its random stream included).
        assert [t.token_ids for t in a.trajectories] == [t.token_ids for t in b.trajectories]
        assert [t.node_path for t in a.trajectories] == [t.node_path for t in b.trajectories]
        non_root = sum(1 for t in b.trajectories if t.steps and _branch_turn(t, b.trajectories) > 0)
        assert b.budget["branches/replayed"] == non_root > 0
        assert b.budget["env_steps/replayed"] >= non_root


def _branch_turn(traj: Trajectory, group: list[Trajectory]) -> int:
    """How many turns `traj` shares with an earlier trajectory of its tree (0: none)."""
    best = 0
    for other in group:
        if other.traj_id >= traj.traj_id or other.tree_id != traj.tree_id:
            continue
        shared = 0
        while shared < min(len(traj.node_path), len(other.node_path)) and \
                traj.node_path[shared] == other.node_path[shared]:
            shared += 1
        best = max(best, shared)
    return best


def test_an_env_that_neither_forks_nor_replays_alike_stops_the_rollout_with_one_line(policy):
    _, tokenizer = policy
    with pytest.raises(BranchError) as excinfo:
        run_tree(tokenizer, env_cls=NondeterministicWalk, tasks=1)
    message = str(excinfo.value)
    assert "NondeterministicWalk cannot fork" in message and "make fork() copy" in message
    assert "\n" not in message


def test_a_branch_whose_fork_fails_is_an_infra_failure_and_is_made_again(policy):
    _, tokenizer = policy
    groups = run_tree(tokenizer, env_cls=BrokenForkWalk, tasks=1, strategy=TreeStrategy(m=1, n=4, l=1))
    group = groups[0]
    failed = [t for t in group.trajectories if t.infra_error]
    # Every branch from a node past the root failed (the forks kept there failed) and was
    # drawn again from the same node, until the group's refills ran out; branches from the root
    # (fresh resets) worked.
    assert failed and all("sandbox died" in t.infra_error for t in failed)
    assert group.budget["infra_errors"] == len(failed)
    healthy = [t for t in group.trajectories if not t.infra_error]
    assert all(t.num_turns == 3 for t in healthy)


# --- advantages through the trainer's path -----------------------------------------------------


def _leaf(reward: float, group_id: int, tree_id: int, traj_id: int) -> Trajectory:
    steps = [Step("a", (3, 5)), Step("b", (7, 9))]
    return Trajectory(token_ids=list(range(10)), loss_mask=[0, 0, 0, 1, 1, 0, 0, 1, 1, 0],
                      logprobs=[0.0] * 10, prompt_len=3, steps=steps, reward=reward,
                      group_id=group_id, traj_id=traj_id, tree_id=tree_id)


def test_tree_grpo_advantages_through_the_estimator_registry_equal_the_worked_vector():
    rewards, trees = [1, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]
    group = Group(0, {"seed": 0}, [_leaf(r, 0, t, i) for i, (r, t) in enumerate(zip(rewards, trees))])
    settings = load_config(None, ["rollout.strategy=tree", "algorithm.advantage=tree_grpo"]).algorithm
    per_token = token_advantages("tree_grpo", [group], settings)
    worked = [2.067568, -1.490219, -1.490219, 1.490219, 1.490219, -2.067568]
    for values, expected, traj in zip(per_token, worked, group.trajectories):
        mask = np.array(traj.loss_mask, dtype=bool)
        assert values[mask] == pytest.approx([expected] * 4, abs=1e-6)
        assert not values[~mask].any()
    assert tree_grpo_advantages(rewards, [0] * 6, trees) == pytest.approx(worked, abs=1e-6)


# --- training on trees -------------------------------------------------------------------------


def test_a_short_seeded_tree_grpo_run_raises_reward(tmp_path, tiny_model_dir):
    import json

    import torch

    from agentrl.training.metrics import read_metrics
    from agentrl.training.rl import RLTrainer
    from tests.foundation.test_training import LowercaseTurns

    torch.manual_seed(0)
    config = load_config(None, [
        f"run.out_dir={tmp_path}", "run.name=tree", "run.seed=3",
        "rollout.strategy={name: tree, m: 2, n: 2, l: 1}", "algorithm.advantage=tree_grpo",
        "rollout.tasks_per_iteration=3", "rollout.max_new_tokens=3", "train.micro_batch_size=36",
        "train.warmup_steps=0", "train.checkpoint_every=10", "train.iterations=10", "train.lr=1e-2",
        "train.log_trajectories=6",
    ])
    model, tokenizer = load_model(tiny_model_dir)
    RLTrainer(config, tmp_path / "tree", model, tokenizer, LowercaseTurns).train()
    metrics = [m for m in read_metrics(tmp_path / "tree") if "reward/mean" in m]
    rewards = [m["reward/mean"] for m in metrics]
    assert len(rewards) == 10
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.3, rewards
    last = metrics[-1]
    assert last["rollout/trajectories"] == 3 * 6 and last["rollout/branches"] == 3 * 2 * 2
    # 6 trajectories for what 4 chains of 3 turns would generate, at most (branches share turns).
    assert last["rollout/env_steps"] < 3 * 6 * 3
    assert last["rollout/trajectories_per_1k_gen_tokens"] > 0
    # The trie update forwards a group's shared turns once.
    assert sum(m["perf/update_tokens_shared"] for m in metrics) > 0
    assert all(m["perf/update_tokens_forwarded"] > 0 for m in metrics if m["policy/optimizer_steps"])
    # One whole group is logged, each leaf with its node path and advantage.
    lines = [json.loads(line) for line in (tmp_path / "tree" / "trajectories.jsonl").read_text().splitlines()]
    group = [line for line in lines if line["iteration"] == 10]
    assert len(group) == 6 and {line["group_id"] for line in group} == {0}
    assert all(line["node_path"] == [s["node_id"] for s in line["steps"]] for line in group)
    assert all(isinstance(line["advantage"], float) for line in group)


def test_tool_calls_run_once_per_node_and_branches_inherit_the_results(policy):
    """On SearchQA (a ToolEnv with a search tool): the prefix's searches are not run again in a
    branch, so the calls executed equal the calls in distinct nodes, and the logged tool metrics
    count each shared turn once."""
    from agentrl.envs import make_env
    from agentrl.rollout import oracle_policy
    from agentrl.training.tool_metrics import tool_metrics

    _, tokenizer = policy

    def searchqa():
        return make_env("agentrl/SearchQA-v0", worlds="per_episode", max_turns=4, topk=1)

    with RolloutEngine(None, tokenizer, SamplingParams(seed=1)) as engine:
        groups = engine.run(searchqa, [{"seed": s} for s in range(3)], TreeStrategy(m=2, n=2, l=1),
                            policy=oracle_policy(tokenizer, mistake_rate=0.5, mistake_at="any", seed=1))
    for group in groups:
        trajs = group.trajectories
        nodes = {s.node_id: s for t in trajs for s in t.steps}
        calls_in_nodes = sum(len(s.info.get("tool_calls", [])) for s in nodes.values())
        assert calls_in_nodes > 0 and group.budget["tool_calls"] == calls_in_nodes
        # A branch holds its parent's observations (search results) for the shared turns.
        for t in trajs:
            for s in t.steps:
                assert s.observation == nodes[s.node_id].observation
        metrics = tool_metrics(trajs)
        assert metrics["tools/search/calls"] == calls_in_nodes
        leaves_calls = sum(len(s.info.get("tool_calls", [])) for t in trajs for s in t.steps)
        assert leaves_calls > calls_in_nodes  # what counting per leaf would have said


def test_forks_are_kept_only_where_a_later_round_can_branch(policy):
    """With l = 1 the initial chains' turns can be branched, the branches' cannot: the engine
    keeps forks after the chains' turns only (a fork of a sandboxed env costs a sandbox)."""
    _, tokenizer = policy
    forks = []

    class CountingWalk(Walk):
        def fork(self):
            forks.append(len(self.path))
            return super().fork()

    groups = run_tree(tokenizer, env_cls=CountingWalk, tasks=1, strategy=TreeStrategy(m=2, n=2, l=1))
    chains = [t for t in groups[0].trajectories if t.traj_id < 2]
    kept = sum(t.num_turns - 1 for t in chains)  # after every turn but the last
    branches_from_nodes = sum(1 for t in groups[0].trajectories if t.traj_id >= 2) - \
        sum(1 for t in groups[0].trajectories if t.traj_id >= 2 and t.steps[0].node_id not in
            {s.node_id for c in chains for s in c.steps})
    assert len(forks) == kept + branches_from_nodes
