"""The recipe's env workers (the `ray` section): Ray started or joined, workers up, all shut down.

    with recipe_env_workers(config) as workers:    # None unless ray.enabled
        make_env = env_factory(config, workers=workers)   # RemoteEnv proxies

With `ray.enabled: true` every env of the run (training, evaluation, demonstrations) lives in
one of `ray.workers` env worker actors, and each worker holds the sandbox pool of the envs it
hosts (`sandbox.pool_size` sandboxes), so the trainer starts no pool of its own. On the way
out, also on an exception or Ctrl-C, the workers close their envs and pools and are killed, and
a Ray instance this run started is shut down (a cluster joined with `ray.address` keeps
running).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import Any, Iterator

from agentrl.config import Config, ConfigError, RayConfig


def ray_missing_error() -> ConfigError:
    return ConfigError("ray.enabled=true needs Ray, which is not installed; install it with "
                       "pip install 'agentrl[ray]' or set ray.enabled=false")


def start_ray(settings: RayConfig) -> bool:
    """Start a local Ray instance (`ray.address` None) or join a cluster; True when this call
    started or joined it (and the caller shuts it down), False when Ray was running in this
    process already."""
    try:
        import ray
    except ImportError:
        raise ray_missing_error() from None
    if ray.is_initialized():
        return False
    needed = settings.workers * settings.num_cpus_per_worker
    if settings.address is None:
        # Logical CPUs: enough for the workers even on a machine with fewer cores (they mostly
        # wait on sandboxes), so no worker is left pending for want of a CPU.
        ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(needed)), include_dashboard=False,
                 object_store_memory=settings.object_store_mb * 2**20, logging_level=logging.WARNING)
        return True
    try:
        ray.init(address=settings.address, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise ConfigError(f"ray.address={settings.address!r}: no Ray cluster answers there ({exc}); "
                          "start one (ray start --head) or leave ray.address unset for a local "
                          "instance") from None
    available = ray.cluster_resources().get("CPU", 0.0)
    if needed > available:
        ray.shutdown()
        raise ConfigError(f"ray.workers={settings.workers} x ray.num_cpus_per_worker="
                          f"{settings.num_cpus_per_worker:g} needs {needed:g} CPUs and the cluster at "
                          f"{settings.address} has {available:g}; lower one of them or add nodes")
    return True


@contextlib.contextmanager
def recipe_env_workers(config: Config) -> Iterator[Any]:
    """The run's `EnvWorkerGroup` (None unless `ray.enabled`), shut down on the way out."""
    settings = config.ray
    if not settings.enabled:
        yield None
        return
    started = start_ray(settings)
    try:
        from agentrl.envs.remote import EnvWorkerGroup, SandboxSettings
        from agentrl.sandboxes import SandboxError

        sandbox = config.sandbox
        pool = (SandboxSettings(sandbox.pool_size, sandbox.backend, sandbox.start_workers)
                if sandbox.pool_size > 0 else None)
        try:
            group = EnvWorkerGroup(settings.workers, num_cpus_per_worker=settings.num_cpus_per_worker,
                                   sandbox=pool, imports=config.env.imports,
                                   max_concurrency=settings.max_concurrency)
        except SandboxError as exc:  # SandboxUnavailable says what to install or start
            raise ConfigError(f"sandbox.pool_size={sandbox.pool_size} (in the env workers): {exc}") from None
        with group:
            yield group
    finally:
        if started:
            import ray

            ray.shutdown()


@contextlib.contextmanager
def recipe_env_hosts(config: Config) -> Iterator[tuple[Any, Any]]:
    """`(pool, workers)` for the run's envs: the env workers with `ray.enabled` (which hold the
    sandbox pools; pool is None), else the recipe's local sandbox pool (workers is None)."""
    from agentrl.training.sandbox_pool import recipe_sandbox_pool

    with recipe_env_workers(config) as workers:
        if workers is not None:
            yield None, workers
            return
        with recipe_sandbox_pool(config) as pool:
            yield pool, None
