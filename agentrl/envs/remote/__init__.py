"""Envs hosted in other processes: env workers as Ray actors, driven through `RemoteEnv` proxies.

    from agentrl.envs.remote import EnvWorkerGroup, SandboxSettings
    with EnvWorkerGroup(workers=2, sandbox=SandboxSettings(pool_size=8)) as group:
        make_env = group.factory("agentrl/Code-v0", {})
        groups = engine.run(make_env, tasks, strategy)   # the engine sees ordinary envs

Importing this package imports Ray (`pip install 'agentrl[ray]'`). A recipe turns it on with
`ray.enabled: true` (`agentrl.training.ray_envs`; docs/scale.md, section 4).
"""

from agentrl.envs.remote.proxy import EnvWorkerLost, RemoteEnv
from agentrl.envs.remote.worker import EnvWorker, Outcome, RemoteEnvError, SandboxSettings
from agentrl.envs.remote.workers import EnvWorkerGroup, RemoteEnvFactory, WorkerStartTimeout

__all__ = [
    "EnvWorker",
    "EnvWorkerGroup",
    "EnvWorkerLost",
    "Outcome",
    "RemoteEnv",
    "RemoteEnvError",
    "RemoteEnvFactory",
    "SandboxSettings",
    "WorkerStartTimeout",
]
