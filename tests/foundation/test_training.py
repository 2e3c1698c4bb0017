"""The RL loop: it learns, it resumes exactly, Ctrl-C leaves a resumable run directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from agentrl.config import load_config
from agentrl.envs import TextEnv, make_info
from agentrl.models import load_model
from agentrl.training import RLTrainer, latest_checkpoint, read_metrics, sft_train
from agentrl.rollout import collect_demonstrations
from agentrl.envs import make_env


class Lowercase(TextEnv):
    """An easy task for a random model: the reward is the share of lowercase letters it writes."""

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return "Write some letters.", make_info(anchor="start")

    def step(self, action):
        share = sum(c.islower() for c in action) / max(1, len(action))
        return "", share, True, False, make_info(anchor="start", success=share == 1.0)


class LowercaseTurns(Lowercase):
    """Three turns of the same; each turn's share is its step reward (varied, multi-turn)."""

    max_turns = 3

    def reset(self, *, seed=None, options=None):
        self.turn = 0
        return super().reset(seed=seed)

    def step(self, action):
        self.turn += 1
        _, share, _, _, info = super().step(action)
        done = self.turn >= self.max_turns
        return ("" if done else "More."), share, done, False, {**info, "anchor": self.turn}


def _config(tmp_path, name, **extra):
    overrides = [
        f"run.out_dir={tmp_path}", f"run.name={name}", "run.seed=3",
        "rollout.group_size=8", "rollout.tasks_per_iteration=4", "rollout.max_new_tokens=3",
        "train.micro_batch_size=16", "train.warmup_steps=0", "train.checkpoint_every=1",
        "train.log_trajectories=1",
    ] + [f"{k}={v}" for k, v in extra.items()]
    return load_config(None, overrides)


def _trainer(tmp_path, tiny_model_dir, name, **extra):
    config = _config(tmp_path, name, **extra)
    model, tokenizer = load_model(tiny_model_dir)
    return RLTrainer(config, tmp_path / name, model, tokenizer, Lowercase)


def test_a_short_seeded_rl_run_raises_reward(tmp_path, tiny_model_dir):
    torch.manual_seed(0)
    trainer = _trainer(tmp_path, tiny_model_dir, "learn", **{"train.iterations": 10, "train.lr": 1e-2})
    trainer.train()
    rewards = [m["reward/mean"] for m in read_metrics(tmp_path / "learn") if "reward/mean" in m]
    assert len(rewards) == 10
    first, last = np.mean(rewards[:3]), np.mean(rewards[-3:])
    assert last > first + 0.1, rewards
    metrics = read_metrics(tmp_path / "learn")[-1]
    for key in ("policy/approx_kl", "policy/clipfrac", "policy/entropy", "policy/grad_norm",
                "loss/policy", "perf/tokens_per_s", "rollout/success_rate"):
        assert key in metrics
    assert (tmp_path / "learn" / "tensorboard").is_dir()
    line = json.loads((tmp_path / "learn" / "trajectories.jsonl").read_text().splitlines()[0])
    assert line["iteration"] == 1 and line["steps"]


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_ctrl_c_then_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, tiny_model_dir):
    settings = {"train.iterations": 3, "train.lr": 1e-3, "train.checkpoint_every": 10}
    straight = _trainer(tmp_path, tiny_model_dir, "straight", **settings)
    straight.train()

    # Ctrl-C in the middle of iteration 3's rollout (each iteration makes 4 x 8 = 32 envs).
    made = []

    def make_env_then_ctrl_c():
        made.append(1)
        if len(made) == 70:
            raise KeyboardInterrupt
        return Lowercase()

    interrupted = _trainer(tmp_path, tiny_model_dir, "split", **settings)
    interrupted.make_env = make_env_then_ctrl_c
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    # checkpoint_every=10, so this checkpoint exists only because of the interrupt
    assert latest_checkpoint(tmp_path / "split").name == "iter_000002"

    resumed = _trainer(tmp_path, tiny_model_dir, "split", **settings)
    assert resumed.resume() and resumed.iteration == 2 and resumed.next_task == 8
    resumed.train()
    assert latest_checkpoint(tmp_path / "split").name == "iter_000003"
    assert torch.allclose(_weights(resumed.model), _weights(straight.model), atol=1e-6)


def test_sft_trains_only_on_action_tokens_and_lowers_the_loss(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir)
    demos = collect_demonstrations(lambda: make_env("agentrl/Arithmetic-v0"), range(64), tokenizer)
    for t in demos:
        start, end = t.steps[0].action_span
        assert sum(t.loss_mask) == end - start == sum(t.loss_mask[start:end])
    history = sft_train(model, tokenizer, demos, epochs=3, batch_size=16, lr=3e-3, warmup_steps=0)
    assert history[-1]["sft/loss"] < 0.7 * history[0]["sft/loss"]


class HalfConstant(Lowercase):
    """Even seeds pay 1 whatever the action, so their GRPO groups have advantage 0 everywhere."""

    def reset(self, *, seed=None, options=None):
        self.constant = seed is not None and seed % 2 == 0
        return super().reset(seed=seed)

    def step(self, action):
        observation, share, done, truncated, info = super().step(action)
        return observation, 1.0 if self.constant else share, done, truncated, info


def test_skipping_zero_advantage_sequences_leaves_the_update_unchanged(tmp_path, tiny_model_dir):
    """The update skips sequences whose advantages are all 0; the weights must not notice."""
    results = []
    for name, skip in (("skip", True), ("full", False)):
        torch.manual_seed(0)
        config = _config(tmp_path, name, **{"train.iterations": 2, "train.lr": 1e-3,
                                            "train.mini_batches": 2})
        model, tokenizer = load_model(tiny_model_dir)
        trainer = RLTrainer(config, tmp_path / name, model, tokenizer, HalfConstant)
        if not skip:
            trainer._needs_forward = lambda trajs, advantages: [True] * len(trajs)
        metrics = [trainer.train_iteration() for _ in range(2)]
        results.append((_weights(model), metrics))
    (skipped_weights, skipped_metrics), (full_weights, full_metrics) = results
    assert skipped_metrics[0]["perf/skipped_sequences"] == pytest.approx(0.5)
    assert full_metrics[0]["perf/skipped_sequences"] == 0.0
    assert torch.allclose(skipped_weights, full_weights, atol=1e-6)


@pytest.mark.parametrize(
    "settings",
    [
        {"algorithm.advantage": "gigpo", "algorithm.norm": "mean"},
        {"algorithm.agg": "seq-mean-token-mean", "algorithm.level": "sequence"},
        {"algorithm.kl_coef": 0.1, "algorithm.entropy_coef": 0.01, "algorithm.group_filter": "dynamic"},
        {"algorithm.group_filter": "top_std", "train.ppo_epochs": 2, "train.mini_batches": 2},
    ],
)
def test_each_objective_runs_a_multi_turn_iteration(tmp_path, tiny_model_dir, settings):
    config = _config(tmp_path, "objective", **{"train.iterations": 1, **settings,
                                               "rollout.max_new_tokens": 6})
    model, tokenizer = load_model(tiny_model_dir)
    before = _weights(model).clone()
    trainer = RLTrainer(config, tmp_path / "objective", model, tokenizer, LowercaseTurns)
    metrics = trainer.train_iteration()
    assert metrics["rollout/turns_mean"] > 1.0
    # Turns after the first reuse the episode's keys and values (the generator's prefix cache).
    assert metrics["perf/prompt_tokens_cached"] > 0
    assert metrics["perf/prompt_tokens_processed"] > 0
    assert np.isfinite(metrics["loss/total"]) and metrics["policy/optimizer_steps"] >= 1
    if settings.get("algorithm.kl_coef"):
        assert "loss/kl" in metrics
    assert not torch.equal(before, _weights(model))


def test_every_recipe_loads_and_makes_its_env(monkeypatch):
    from pathlib import Path

    from agentrl.training.run import env_factory

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)  # recipes import their env modules relative to the project root
    recipes = sorted(root.joinpath("recipes").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        env = env_factory(load_config(recipe))()
        env.close()
