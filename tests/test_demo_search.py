"""The SearchQA demo: its recipe file matches the embedded demo, and evaluation is held out."""

from __future__ import annotations

from pathlib import Path

from agentrl.config import load_config
from agentrl.training.demos import demo_overrides
from agentrl.training.run import env_factory

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "searchqa_grpo.yaml"


def test_recipe_file_has_the_demo_settings():
    recipe = load_config(RECIPE).model_dump()
    demo = load_config(None, demo_overrides("search")).model_dump()
    recipe["run"].pop("name"), demo["run"].pop("name")
    assert recipe == demo


def test_demo_evaluates_on_worlds_never_trained_on():
    config = load_config(None, demo_overrides("search"))
    assert config.eval.env_kwargs == {}  # the same env as training; only the seeds differ
    env = env_factory(config)()
    try:
        def names(seeds):
            out = set()
            for seed in seeds:
                env.reset(seed=seed)
                out.update(d.title for d in env.unwrapped.world.documents())
            return out

        first = config.env.train_seed_offset
        trained = names(range(first, first + config.train.iterations * config.rollout.tasks_per_iteration))
        held_out = names(range(config.eval.seed_offset, config.eval.seed_offset + 100))
        # Random names: worlds share one only by chance.
        assert len(held_out & trained) < 0.05 * len(held_out)
        # No JSON tool specs for the chat template: the system prompt already lists the tools.
        assert env.unwrapped.tool_specs == () and "<search>" in env.unwrapped.system_prompt
    finally:
        env.close()
