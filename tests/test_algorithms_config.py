"""The estimators' settings in a recipe: validated, and the trainer passes them on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agentrl.algorithms import gigpo_advantages
from agentrl.config import ConfigError, load_config
from agentrl.envs import TextEnv, make_info
from agentrl.models import load_model
from agentrl.training import RLTrainer
from agentrl.training.batch import collate
from agentrl.types import Step, Trajectory

GIGPO_SETTINGS = {
    "algorithm.advantage": "gigpo",
    "algorithm.norm": "mean",
    "algorithm.episode_stats": "trajectories",
    "algorithm.similarity": 0.9,
    "algorithm.invalid_penalty": 0.25,
}


def _overrides(settings: dict[str, object]) -> list[str]:
    return [f"{key}={value}" for key, value in settings.items()]


# ---------------------------------------------------------------- validation


def test_new_settings_load_from_a_recipe(tmp_path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "algorithm:\n  advantage: gigpo\n  norm: std\n  dual_clip: 3.0\n"
        "  episode_stats: trajectories\n  similarity: 0.95\n  invalid_penalty: 0.1\n"
    )
    acfg = load_config(recipe).algorithm
    assert (acfg.dual_clip, acfg.episode_stats, acfg.similarity, acfg.invalid_penalty) == (
        3.0, "trajectories", 0.95, 0.1,
    )
    defaults = load_config(None).algorithm  # the reference code's conventions
    assert (defaults.dual_clip, defaults.episode_stats, defaults.similarity) == (None, "steps", None)
    assert defaults.invalid_penalty == 0.0


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("algorithm.dual_clip=1.0", "algorithm.dual_clip: Input should be greater than 1"),
        ("algorithm.episode_stats=rows", "algorithm.episode_stats: Input should be 'steps' or 'trajectories'"),
        ("algorithm.similarity=1.5", "algorithm.similarity: Input should be less than or equal to 1"),
        ("algorithm.invalid_penalty=-0.1", "algorithm.invalid_penalty: Input should be greater than or equal to 0"),
    ],
)
def test_a_wrong_value_names_its_setting(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(None, [override])
    assert expected in str(excinfo.value)
    assert "\n" not in str(excinfo.value)


def test_gigpo_with_rloo_norm_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(None, ["algorithm.advantage=gigpo", "algorithm.norm=loo"])
    message = str(excinfo.value)
    assert "algorithm.norm" in message and "gigpo" in message
    assert "algorithm.norm=mean" in message and "algorithm.norm=std" in message
    assert "\n" not in message and "Value error" not in message
    # RLOO stays a GRPO option.
    assert load_config(None, ["algorithm.norm=loo"]).algorithm.norm == "loo"


def test_gigpo_with_rloo_norm_is_refused_on_assignment_too() -> None:
    config = load_config(None, ["algorithm.norm=loo"])
    with pytest.raises(ValueError, match="algorithm.norm"):
        config.algorithm.advantage = "gigpo"


# ---------------------------------------------------------------- the trainer passes them on


class _Constant(TextEnv):
    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return "Say something.", make_info(anchor="start")

    def step(self, action):
        return "", 0.0, True, False, make_info(anchor="start")


def _trainer(tmp_path, tiny_model_dir, settings: dict[str, object]) -> RLTrainer:
    config = load_config(None, [f"run.out_dir={tmp_path}", "run.name=t", *_overrides(settings)])
    model, tokenizer = load_model(tiny_model_dir)
    return RLTrainer(config, tmp_path / "t", model, tokenizer, _Constant)


def _trajectory(group: int, traj: int, steps: list[tuple[float, str, bool]]) -> Trajectory:
    """Token ids 10, 11, ...: a 2-token prompt, then per step a 2-token action and 1 observation."""
    token_ids, loss_mask, spans = [10, 11], [0, 0], []
    for _ in steps:
        start = len(token_ids)
        token_ids += [12 + start, 13 + start, 14 + start]
        loss_mask += [1, 1, 0]
        spans.append((start, start + 2))
    return Trajectory(
        token_ids=token_ids, loss_mask=loss_mask, logprobs=[-1.0 * m for m in loss_mask],
        prompt_len=2, group_id=group, traj_id=traj,
        steps=[Step(action_text="a", action_span=span, reward=reward, anchor=anchor,
                    action_valid=valid)
               for span, (reward, anchor, valid) in zip(spans, steps, strict=True)],
    )


def test_gigpo_settings_reach_the_advantages(tmp_path, tiny_model_dir) -> None:
    room, room_b, hall = "You are in a kitchen with a table.", "You are in a kitchen with a tabel.", "A hall."
    trajs = [
        _trajectory(0, 0, [(0.0, room, True), (1.0, hall, True)]),
        _trajectory(0, 1, [(0.0, room_b, True), (0.0, hall, False), (1.0, hall, True)]),
    ]
    rows = [s for t in trajs for s in t.steps]
    expected = gigpo_advantages(
        [s.reward for s in rows], [0, 0, 1, 1, 1], [0] * 5, [s.anchor for s in rows],
        norm="mean", episode_stats="trajectories", similarity=0.9,
        invalid=[not s.action_valid for s in rows], invalid_penalty=0.25,
    )
    defaults = gigpo_advantages([s.reward for s in rows], [0, 0, 1, 1, 1], [0] * 5,
                                [s.anchor for s in rows], norm="mean")
    assert not np.allclose(expected, defaults)  # the settings matter for this batch

    got = _advantages(_trainer(tmp_path, tiny_model_dir, GIGPO_SETTINGS), trajs)
    per_step = [float(adv[s.action_span[0]]) for t, adv in zip(trajs, got) for s in t.steps]
    np.testing.assert_allclose(per_step, expected, atol=1e-12)
    for t, adv in zip(trajs, got):  # on both action tokens, nowhere else
        mask = np.asarray(t.loss_mask, dtype=bool)
        assert np.all(adv[~mask] == 0.0)
        for s in t.steps:
            assert adv[s.action_span[0]] == adv[s.action_span[1] - 1]


def _advantages(trainer, trajs):
    """The per-token advantages the trainer's estimator (`algorithm.advantage`) gives `trajs`."""
    from agentrl.algorithms import token_advantages
    from agentrl.types import Group

    ids = sorted({t.group_id for t in trajs})
    groups = [Group(i, {}, [t for t in trajs if t.group_id == i]) for i in ids]
    ordered = [t for g in groups for t in g.trajectories]
    algorithm = trainer.config.algorithm
    by_id = dict(zip(map(id, ordered), token_advantages(algorithm.advantage, groups, algorithm)))
    return [by_id[id(t)] for t in trajs]


def test_rloo_singleton_group_reaches_the_trainer(tmp_path, tiny_model_dir) -> None:
    traj = _trajectory(0, 0, [(0.0, "x", True)])
    traj.reward = 0.75
    got = _advantages(_trainer(tmp_path, tiny_model_dir, {"algorithm.norm": "loo"}), [traj])
    assert got[0][traj.steps[0].action_span[0]] == pytest.approx(0.75)


@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_dual_clip_reaches_the_loss(tmp_path, tiny_model_dir, dual_clip) -> None:
    # Behaviour log-probs far below the current ones make every ratio huge (e^20 after the
    # clamp); with a negative advantage only the dual-clip bound keeps the loss at -c * A.
    settings = {} if dual_clip is None else {"algorithm.dual_clip": dual_clip}
    trainer = _trainer(tmp_path, tiny_model_dir, settings)
    traj = _trajectory(0, 0, [(0.0, "x", True)])
    traj.logprobs = [-40.0 * m for m in traj.loss_mask]
    advantages = [-1.0 * np.asarray(traj.loss_mask, dtype=np.float64)]
    batch = collate([traj], advantages, trainer.tokenizer.pad_token_id)
    with torch.no_grad():
        _, parts = trainer._loss(batch)
    if dual_clip is None:
        assert parts["loss/policy"] > 1e6
    else:
        assert parts["loss/policy"] == pytest.approx(3.0)


# ---------------------------------------------------------------- UFO's turn counting in a recipe


@pytest.mark.parametrize(("turn_counting", "expected"), [(None, 0.9), ("reference", 0.9), ("paper", 0.4)])
def test_ufo_turn_counting_is_an_env_setting(turn_counting, expected) -> None:
    from agentrl.training.run import env_factory

    overrides = ["env.id=agentrl/ArithmeticTryAgain-v0"]
    if turn_counting is not None:
        overrides.append(f"env.kwargs.turn_counting={turn_counting}")
    env = env_factory(load_config(None, overrides))()
    env.reset(seed=0)
    env.step("no answer")  # malformed
    _, reward, terminated, _, _ = env.step(env.oracle_action())
    assert terminated and reward == pytest.approx(expected)
    env.close()


def test_ufo_turn_counting_names_a_wrong_value() -> None:
    from agentrl.envs import make_env

    with pytest.raises(ValueError, match="turn_counting must be 'reference' or 'paper'"):
        make_env("agentrl/ArithmeticTryAgain-v0", turn_counting="turns")
