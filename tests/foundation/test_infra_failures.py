"""Infrastructure failures are counted, replaced where the strategy can, and never trained on.

An env that raises (or a tool whose server stays down) says nothing about the policy: scored as
reward 0 it would hand negative advantages to the actions before the crash.
"""

from __future__ import annotations

import pytest

from agentrl.config import load_config
from agentrl.envs import TextEnv, make_info
from agentrl.eval import evaluate
from agentrl.generation import HFGenerator
from agentrl.models import load_model
from agentrl.training import rl
from agentrl.rollout import ChainStrategy, RolloutEngine
from agentrl.training import RLTrainer, read_metrics
from agentrl.types import Completion, SamplingParams


class CrashesOnSomeSeeds(TextEnv):
    """Pays 1 for any answer. With a seed divisible by 3, the first `flaky_resets` episodes
    crash at their second turn (later ones, the replacements, work); seeds ending in 7 always
    crash at reset."""

    max_turns = 2
    flaky_resets = 2
    resets: dict = {}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed % 10 == 7:
            raise ConnectionError("task server unreachable")
        count = type(self).resets[seed] = type(self).resets.get(seed, 0) + 1
        self.flaky = count <= type(self).flaky_resets
        self.seed, self.turn = seed, 0
        return "Write anything.", make_info(anchor="start")

    def step(self, action):
        self.turn += 1
        if self.turn == 2 and self.seed % 3 == 0 and self.flaky:
            raise OSError("sandbox died")
        return "Again.", 1.0, self.turn == 2, False, make_info(anchor=self.turn, success=True)


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return load_model(tiny_model_dir)


def _say(tokenizer):
    def act(episodes, params):
        ids = tokenizer("hello", add_special_tokens=False)["input_ids"]
        return [Completion(list(ids), [-1.0] * len(ids), "stop", "hello") for _ in episodes]
    return act


def test_crashes_are_marked_and_replaced(policy):
    _, tokenizer = policy
    CrashesOnSomeSeeds.resets, CrashesOnSomeSeeds.flaky_resets = {}, 2
    with RolloutEngine(None, tokenizer, SamplingParams()) as engine:
        groups = engine.run(CrashesOnSomeSeeds, [{"seed": 3}, {"seed": 4}, {"seed": 7}],
                            ChainStrategy(4), policy=_say(tokenizer))
    crashing, healthy, unreachable = groups
    failed = [t for t in crashing.trajectories if t.infra_error]
    assert len(failed) == 2 and all("OSError: sandbox died" in t.infra_error for t in failed)
    assert all(t.num_turns == 2 for t in failed)
    # The two crashed rollouts are replaced.
    assert sum(1 for t in crashing.trajectories if not t.infra_error) == 4
    assert crashing.budget["infra_errors"] == 2
    assert not any(t.infra_error for t in healthy.trajectories) and len(healthy.trajectories) == 4
    # A reset that always crashes: 4 failures, then at most 4 refills, all failing.
    assert len(unreachable.trajectories) == 8
    assert all(t.infra_error.startswith("env reset failed: ConnectionError") for t in unreachable.trajectories)
    assert all(t.token_ids == [] for t in unreachable.trajectories)


def test_the_trainer_counts_infra_failures_and_trains_only_on_the_rest(tmp_path, tiny_model_dir, monkeypatch):
    CrashesOnSomeSeeds.resets, CrashesOnSomeSeeds.flaky_resets = {}, 2
    config = load_config(None, [
        f"run.out_dir={tmp_path}", "run.name=crashy", "run.seed=0", "rollout.group_size=4",
        "rollout.tasks_per_iteration=6", "rollout.max_new_tokens=3", "train.iterations=1",
        "train.log_trajectories=100", "env.train_seed_offset=2",  # seeds 2..7: 3, 6 crash, 7 at reset
    ])
    model, tokenizer = load_model(tiny_model_dir)
    trainer = RLTrainer(config, tmp_path / "crashy", model, tokenizer, CrashesOnSomeSeeds)
    trained = []
    real_advantages = rl.token_advantages

    def capture(name, groups, settings):
        trained.extend(t for g in groups for t in g.trajectories)
        return real_advantages(name, groups, settings)

    monkeypatch.setattr(rl, "token_advantages", capture)
    trainer.train()
    metrics = read_metrics(tmp_path / "crashy")[-1]
    assert metrics["rollout/infra_errors"] == 2 + 2 + 8  # seeds 3 and 6: two each; seed 7: 4 + 4 refills
    assert trained and not any(t.infra_error for t in trained)
    assert len(trained) == 5 * 4  # every group but seed 7's is full again
    # Rewards of crashed rollouts (0) do not pull the statistics down: all others pay 1.
    assert metrics["reward/mean"] == pytest.approx(2.0) and metrics["reward/std"] == 0.0


def test_evaluation_reports_infra_failures_and_scores_the_rest(policy):
    model, tokenizer = policy
    CrashesOnSomeSeeds.resets, CrashesOnSomeSeeds.flaky_resets = {}, 1
    metrics, trajectories = evaluate(HFGenerator(model, tokenizer), tokenizer, CrashesOnSomeSeeds,
                                     [1, 2, 3, 4], max_new_tokens=3)
    assert metrics["infra_errors"] == 1  # seed 3's first episode; its replacement works
    assert metrics["episodes"] == 4 and metrics["success"] == 1.0
    assert len(trajectories) == 5
