"""The SearchQA demo: its recipe file matches the embedded demo, and evaluation is held out."""

from __future__ import annotations

from collections import Counter
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
        def questions(seeds):
            out = []
            for seed in seeds:
                env.reset(seed=seed)
                out.append((env.unwrapped.episode.task.prompt, env.unwrapped.episode.task.answer))
            return out

        first = config.env.train_seed_offset
        trained = questions(range(first, first + config.train.iterations * config.rollout.tasks_per_iteration))
        trained += questions(range(config.sft.seed_offset, config.sft.seed_offset + config.sft.demos))
        held_out = questions(range(config.eval.seed_offset, config.eval.seed_offset + 300))
        # Every world is new: answering a held-out question with the answer it had in training
        # (or with the most frequent answer) is right only by chance.
        recalled = dict(trained)
        assert sum(recalled.get(q) == a for q, a in held_out) < 0.05 * len(held_out)
        answers = Counter(a for _, a in held_out)
        assert answers.most_common(1)[0][1] < 0.05 * len(held_out)
        # No JSON tool specs for the chat template: the system prompt already lists the tools.
        assert env.unwrapped.tool_specs == () and "<search>" in env.unwrapped.system_prompt
    finally:
        env.close()


def test_sft_env_kwargs_change_only_the_demonstrations(monkeypatch, tmp_path):
    from rich.console import Console

    from agentrl.training import run

    config = load_config(None, demo_overrides("search") + ["sft.env_kwargs={max_hops: 1}"])

    def hops_of(make_env, seeds=range(30)):
        env = make_env()
        try:
            found = set()
            for seed in seeds:
                env.reset(seed=seed)
                found.add(env.unwrapped.episode.task.data["hops"])
            return found
        finally:
            env.close()

    assert hops_of(env_factory(config, demonstrations=True)) == {1}
    assert hops_of(env_factory(config)) == {1, 2, 3}
    assert hops_of(env_factory(config, evaluation=True)) == {1, 2, 3}

    class Collected(Exception):
        pass

    def collect(make_env, seeds, tokenizer, **kwargs):  # stops the warm-up once it has its env
        raise Collected(hops_of(make_env, seeds[:30]))

    monkeypatch.setattr(run, "collect_demonstrations", collect)
    try:
        run._sft(config, tmp_path, model=None, tokenizer=None, console=Console(quiet=True))
    except Collected as done:
        assert done.args[0] == {1}
    else:
        raise AssertionError("the warm-up did not write demonstrations")
