"""Code-v0 with the tiny model: a tokenizer corpus that starts no sandbox, episodes that hold one
sandbox at a time from a warm pool, and recipes/code_grpo.yaml up to its first RL iteration."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from agentrl.envs.tasks.code import Code, trial_output
from agentrl.envs.tasks.code_problems import PROBLEMS
from agentrl.training.corpus import env_corpus

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture
def pool(sandbox_backend):
    from agentrl.sandboxes import SandboxPool

    with SandboxPool(2, sandbox_backend) as pool:
        yield pool


def _played_oracle(env: Code) -> tuple[list[tuple[str, str]], float]:
    messages, reward = [], 0.0
    for _ in range(env.max_turns):
        action = env.oracle_action()
        observation, reward, terminated, truncated, _ = env.step(action)
        messages.append(("assistant", action))
        if terminated or truncated:
            break
        messages.append((env.observation_role, observation))
    return messages, float(reward)


def test_the_oracle_transcript_is_what_playing_the_oracle_shows(pool):
    for index, problem in enumerate(PROBLEMS):
        env = Code(pool=pool)
        try:
            env.reset(seed=0, options={"task_index": index})
            written = env.oracle_transcript()
            played, reward = _played_oracle(env)
        finally:
            env.close()
        assert written == played, problem.name
        assert reward == 1.0, problem.name


def test_the_tokenizer_corpus_of_code_starts_no_sandbox(pool):
    before = pool.stats()["sandbox/checkouts"]
    texts = env_corpus(lambda: Code(pool=pool), range(60))
    assert pool.stats()["sandbox/checkouts"] == before
    # Each text shows the interpreter output the model reads after trying the oracle's code.
    for text in texts:
        problem = next(p for p in PROBLEMS if f"Write a Python function {p.signature} " in text)
        assert f"\n{trial_output(problem)}\n</result>" in text, problem.name
    assert len({text for text in texts}) >= 20  # the corpus covers most problems


def test_an_episode_holds_one_sandbox_at_a_time(sandbox_backend):
    """With a pool of one sandbox, the oracle's episode tries its code (holding the sandbox) and
    then answers: grading must not wait for the sandbox the episode itself still holds."""
    from agentrl.sandboxes import SandboxPool

    outcome: dict[str, float] = {}
    with SandboxPool(1, sandbox_backend) as single:
        env = Code(pool=single)

        def play() -> None:
            env.reset(seed=0, options={"task_index": 0})
            outcome["reward"] = _played_oracle(env)[1]

        player = threading.Thread(target=play, daemon=True)
        player.start()
        player.join(timeout=120)  # generous: a deadlock never ends, a slow machine does
        finished = not player.is_alive()
        if not finished:
            single.close()  # unblocks the waiting checkout
        env.close()
    assert finished, "the episode waited for its own sandbox"
    assert outcome["reward"] == 1.0


def test_the_code_recipe_reaches_its_first_rl_iteration(tmp_path, sandbox_backend):
    """recipes/code_grpo.yaml, shrunk to one RL iteration: corpus, tiny model, demonstrations
    and evaluation through the recipe's sandbox pool, then RL. (Its time to the first
    iteration at full size is measured in docs/sandboxes.md, not here.)"""
    from agentrl.config import load_config
    from agentrl.training.run import run_training

    config = load_config(REPOSITORY / "recipes" / "code_grpo.yaml", [
        f"run.out_dir={tmp_path}", f"sandbox.backend={sandbox_backend}", "sandbox.pool_size=8",
        "sft.demos=8", "sft.epochs=1", "eval.tasks=4", "rollout.tasks_per_iteration=2",
        "rollout.group_size=2", "train.iterations=1",
    ])
    results = run_training(config)
    run_dir = tmp_path / config.run.name
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in records if "reward/mean" in r]
    assert len(rl) == 1 and rl[0]["rollout/trajectories"] == 4
    assert set(results) == {"before RL", "after RL"}
    # Every python call and every grading found a sandbox in the pool.
    assert rl[0]["rollout/infra_errors"] == 0


def test_the_code_arpo_recipe_reaches_its_first_rl_iteration(tmp_path, sandbox_backend):
    """recipes/code_arpo.yaml, shrunk to one RL iteration of 2 problems grown to 2 rollouts each
    (p0 = 1: every rollout that tries code is branched right after the result)."""
    from agentrl.config import load_config
    from agentrl.training.run import run_training

    config = load_config(REPOSITORY / "recipes" / "code_arpo.yaml", [
        f"run.out_dir={tmp_path}", f"sandbox.backend={sandbox_backend}", "sandbox.pool_size=8",
        "sft.demos=8", "sft.epochs=1", "eval.tasks=4", "rollout.tasks_per_iteration=2",
        "rollout.strategy={name: entropy, initial: 1, n: 2, p0: 1.0}", "train.iterations=1",
    ])
    assert config.rollout.trajectories_per_task == 2 and config.algorithm.advantage == "arpo"
    run_training(config)
    records = [json.loads(line) for line in (tmp_path / config.run.name / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in records if "reward/mean" in r]
    assert len(rl) == 1 and rl[0]["rollout/trajectories"] == 4
    assert rl[0]["rollout/infra_errors"] == 0


@pytest.mark.parametrize("override, message", [
    ("sandbox.pool_size=16", "sandbox.pool_size=16 is smaller than the 32 episodes that run at once "
                             "(rollout.tasks_per_iteration x rollout.group_size)"),
    ("env.id=agentrl/SearchQA-v0", "the env agentrl/SearchQA-v0 takes no sandbox pool"),
])
def test_a_pool_that_cannot_serve_the_recipe_is_one_config_error(tmp_path, override, message):
    from agentrl.config import ConfigError, load_config
    from agentrl.training.run import run_training

    config = load_config(REPOSITORY / "recipes" / "code_grpo.yaml",
                         [f"run.out_dir={tmp_path}/runs", "env.kwargs={}", override])
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_training(config)
    assert not (tmp_path / "runs").exists()  # found before a sandbox started or a file was written
