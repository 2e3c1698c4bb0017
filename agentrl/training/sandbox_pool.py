"""The recipe's sandbox pool (the `sandbox` section): checked, started for a run, closed after.

    check_sandbox_settings(config)              # one ConfigError naming the field, or nothing
    with recipe_sandbox_pool(config) as pool:   # None when sandbox.pool_size is 0
        make_env = env_factory(config, pool=pool)

Envs that run code take the pool as their `pool` argument (Code-v0, Calc-v0,
SearchPythonQA-v0). Every running episode holds one sandbox until it ends, and a round of
rollouts runs all its episodes at once, so a pool smaller than the episodes of a round would
leave some waiting for a sandbox that no episode gives back: that is a recipe error, found
before anything starts.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Iterator

import gymnasium

from agentrl.config import Config, ConfigError


def episodes_at_once(config: Config) -> dict[str, int]:
    """The largest rounds of a run: how many episodes each stage runs together."""
    rollout = config.rollout
    per_task, count = rollouts_per_task(config)
    rounds = {
        f"rollout.tasks_per_iteration x {per_task}": rollout.tasks_per_iteration * count,
        "eval.tasks": config.eval.tasks,
    }
    if config.sft.demos > 0:
        rounds["sft.demos"] = demo_chunk(config) or config.sft.demos
    return rounds


def demo_chunk(config: Config) -> int | None:
    """Demonstrations written at a time: `DEMO_CHUNK` for an env that runs code (its constructor
    names a sandbox `pool`), all at once (None) for the others."""
    from agentrl.rollout.demonstrations import DEMO_CHUNK

    if not env_takes_pool(config.env.id, named=True):
        return None
    return min(DEMO_CHUNK, config.sft.demos)


def rollouts_per_task(config: Config) -> tuple[str, int]:
    """The rollouts of one task that may run at once, and the settings that make them: chain's
    G; every leaf a tree grows; the n rollouts ARPO grows a task to (branches included, each
    holding a sandbox forked from its source's)."""
    strategy, rollout = config.rollout.strategy, config.rollout
    if strategy.name == "tree":
        return "rollout.strategy m x (1 + l x n)", strategy.m * (1 + strategy.l * strategy.n)
    if strategy.name == "entropy":
        return "rollout.strategy.n", strategy.n
    return "rollout.group_size", rollout.group_size


def env_takes_pool(env_id: str, *, named: bool = False) -> bool:
    """Whether the registered env's constructor has a `pool` argument (or, unless `named`,
    takes any keyword)."""
    entry_point = gymnasium.spec(env_id).entry_point
    if isinstance(entry_point, str):
        entry_point = gymnasium.envs.registration.load_env_creator(entry_point)
    parameters = inspect.signature(entry_point).parameters.values()
    return any(p.name == "pool" or (not named and p.kind is inspect.Parameter.VAR_KEYWORD)
               for p in parameters)


def check_sandbox_settings(config: Config) -> None:
    """Raise one ConfigError when the recipe's pool cannot serve its env (env registered)."""
    size = config.sandbox.pool_size
    if size == 0:
        return
    if not env_takes_pool(config.env.id):
        raise ConfigError(f"sandbox.pool_size={size}: the env {config.env.id} takes no sandbox pool "
                          "(its constructor has no `pool` argument); set sandbox.pool_size=0")
    stage, episodes = max(episodes_at_once(config).items(), key=lambda item: item[1])
    if episodes > size:
        raise ConfigError(f"sandbox.pool_size={size} is smaller than the {episodes} episodes that run "
                          f"at once ({stage}), each holding a sandbox; raise sandbox.pool_size to "
                          f"{episodes} or lower {stage}")


@contextlib.contextmanager
def recipe_sandbox_pool(config: Config) -> Iterator[Any]:
    """The started pool of `config.sandbox` (None without one), closed on the way out, also on
    an exception or Ctrl-C."""
    settings = config.sandbox
    if settings.pool_size == 0:
        yield None
        return
    from agentrl.sandboxes import SandboxError, SandboxPool

    try:
        pool = SandboxPool(settings.pool_size, settings.backend, start_workers=settings.start_workers)
    except SandboxError as exc:  # SandboxUnavailable says what to install or start
        raise ConfigError(f"sandbox.pool_size={settings.pool_size}: {exc}") from None
    with pool:
        yield pool
