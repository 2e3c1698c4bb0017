"""Recipes: YAML + dotted overrides -> validated Config; errors name the field."""

from __future__ import annotations

import pytest

from agentrl.config import ConfigError, dump_config, load_config


def test_defaults_and_overrides_parse_values_as_yaml(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  lr: 0.001\nenv:\n  kwargs: {digits: 2}\n")
    config = load_config(recipe, ["train.lr=3e-4", "rollout.group_size=4", "env.kwargs.num_operands=3"])
    assert config.train.lr == pytest.approx(3e-4)
    assert config.rollout.group_size == 4
    assert config.env.kwargs == {"digits": 2, "num_operands": 3}


def test_resolved_config_round_trips(tmp_path):
    config = load_config(None, ["run.name=x", "algorithm.agg=seq-mean-token-mean"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.lrr=1", "train.lrr: unknown field (allowed: iterations, lr,"),
        ("train.lr=fast", "train.lr: Input should be a valid number"),
        ("rollout.strategy=beam", "rollout.strategy: unknown strategy 'beam'; available: chain, tree, entropy"),
        ("rollout.strategy={m: 2}", "rollout.strategy: a strategy's settings need its name"),
        ("rollout.strategy={name: tree, kk: 3}", "rollout.strategy.kk: unknown field (allowed: name, m, n, l, k)"),
        ("rollout.strategy={name: tree, l: 1, n: 2, k: 4}", "set k at most 3 or raise l or n"),
        ("rollout.strategy={name: tree, m: 0}", "rollout.strategy.m: Input should be greater than or equal to 1"),
        ("algorithm.advantage=tree_grpo", "rollout.strategy=chain grows none; set rollout.strategy=tree"),
        ("algorithm.advantage=ppo", "algorithm.advantage: unknown estimator 'ppo'; registered: arpo, gigpo, grpo, tree_grpo"),
        ("rollout.strategy={name: entropy, initial: 9, n: 8}",
         "initial=9 rollouts per task exceed n=8, the group size they grow to; set initial at most n"),
        ("rollout.strategy={name: entropy, beam: 1}", "beam=1 allows no branch"),
        ("rollout.strategy={name: entropy, k: 3}",
         "rollout.strategy.k: unknown field (allowed: name, initial, n, beam, p0, beta,"),
        ("algorithm.attribution=hard", "algorithm.attribution=hard is ARPO's credit for shared turns and "
         "advantage=grpo does not read it; set algorithm.advantage=arpo"),
        ("rollout.group_size=0", "rollout.group_size: Input should be greater than or equal to 1"),
        ("nosuch.x=1", "nosuch: unknown field (allowed: run, model, env,"),
        ("train.lr", "must look like section.field=value"),
    ],
)
def test_bad_fields_name_the_field(override, expected):
    with pytest.raises(ConfigError) as excinfo:
        load_config(None, [override])
    assert expected in str(excinfo.value)
    assert "\n" not in str(excinfo.value)


def test_missing_and_malformed_recipe_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad)
