"""`EnvWorkerGroup`: the env workers (Ray actors) of a run, and the envs made on them.

    group = EnvWorkerGroup(workers=2, sandbox=SandboxSettings(pool_size=8, backend="bwrap"))
    make_env = group.factory("agentrl/Code-v0", {"max_turns": 3})   # builds one env to check
    env = make_env()            # a RemoteEnv on the worker that holds the fewest envs
    ...
    group.close()               # envs and sandbox pools closed, actors killed

Workers are spread over the cluster's nodes (Ray's SPREAD scheduling); each starts its own
sandbox pool for the envs it hosts. A new env goes to the worker holding the fewest open envs
(a fork stays on its parent's worker, which holds the parent's sandbox state). When a call
finds its worker dead, the proxy raises `EnvWorkerLost` and the group starts a new worker in
the same slot: envs made afterwards go to live workers only.

Nothing here waits without a limit on a worker that never comes up: a worker Ray cannot place
(the cluster lacks the CPUs it asks for) or whose start hangs (a sandbox backend that never
answers) is an error after `start_timeout` seconds, naming the resources it asked for.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Iterable

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from agentrl.envs.remote.proxy import LIFECYCLE, EnvWorkerLost, RemoteEnv, worker_lost, worker_outcome
from agentrl.envs.remote.worker import EnvWorker, SandboxSettings

#: Env calls one worker runs at once (threads of the actor): envs wait on sandboxes and tools.
DEFAULT_MAX_CONCURRENCY = 64
#: Seconds a worker may take to be placed and to start (its sandbox pool included): docker
#: containers of a large pool can take a minute to start; a worker Ray cannot place never does.
DEFAULT_START_TIMEOUT = 300.0


class WorkerStartTimeout(RuntimeError):
    """An env worker was not placed or did not start in time."""


class EnvWorkerGroup:
    """`workers` env worker actors, started at once and checked.

    Args:
        workers: how many actors.
        num_cpus_per_worker: the CPUs Ray reserves for each (env code and sandbox management).
        sandbox: the sandbox pool each worker starts (None: none).
        imports: modules that register the user's envs (`env.imports`).
        max_concurrency: env calls one worker runs at once.
        start_timeout: seconds a worker may take to be placed by Ray and started.

    Raises the exception of a worker that could not start (a module that does not import,
    a sandbox backend that is missing), or `WorkerStartTimeout`, after stopping the others.
    """

    def __init__(self, workers: int, *, num_cpus_per_worker: float = 1.0,
                 sandbox: SandboxSettings | None = None, imports: Iterable[str] = (),
                 max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
                 start_timeout: float = DEFAULT_START_TIMEOUT) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self._num_cpus = num_cpus_per_worker
        self._start_timeout = start_timeout
        self._actor_class = ray.remote(
            # Closing an env returns its sandbox to the pool; on its own threads, a close is
            # never queued behind resets that wait for that very sandbox.
            concurrency_groups={LIFECYCLE: 2},
            max_concurrency=max_concurrency,
        )(EnvWorker).options(
            num_cpus=num_cpus_per_worker,
            scheduling_strategy="SPREAD",
            max_restarts=0,  # a restarted actor would have lost its envs anyway; we replace it
        )
        # The driver's import path, so modules beside the recipe import in the workers too.
        paths = tuple(p for p in [os.getcwd(), *sys.path] if p and os.path.isdir(p))
        self._init_args = (sandbox, tuple(imports), paths)
        self._lock = threading.Lock()
        self._closed = False
        self.replaced = 0  # workers started in place of dead ones
        self._actors: list[Any] = [self._new_actor() for _ in range(workers)]
        self._open: list[int] = [0] * workers  # open envs per worker, as counted here
        # Each worker's `start()` call, until its outcome has been checked: a replacement is
        # checked by the first `make_env` that picks its slot.
        self._starting: dict[int, Any] = {slot: actor.start.remote() for slot, actor in enumerate(self._actors)}
        #: where each worker runs (pid, host, pool_size), filled in as workers start
        self.info: list[dict[str, Any]] = [{} for _ in range(workers)]
        try:
            for slot in range(workers):
                self.info[slot] = self._started(slot, self._starting[slot])
                del self._starting[slot]
        except BaseException:
            self.close()
            raise

    # --- envs ------------------------------------------------------------------------------------

    def make_env(self, env_id: str, kwargs: dict[str, Any]) -> RemoteEnv:
        """A new env `env_id(**kwargs)` on the worker holding the fewest open envs."""
        # A worker found dead here is replaced, and the env is built on a live one: the engine
        # does not expect `make_env()` to fail.
        for attempt in range(len(self._actors) + 2):
            with self._lock:
                if self._closed:
                    raise RuntimeError("the env workers are closed")
                slot = min(range(len(self._actors)), key=lambda i: self._open[i])
                actor = self._actors[slot]
                self._open[slot] += 1
                starting = self._starting.get(slot)
            try:
                if starting is not None:  # a replacement: its pool and imports come first
                    self._check_replacement(slot, actor, starting)
                outcome = worker_outcome(self, slot, actor, actor.create.remote(env_id, kwargs))
            except EnvWorkerLost:
                if attempt == len(self._actors) + 1:
                    raise
                continue
            if outcome.error is not None:
                self.forget(slot, actor)
                raise outcome.error
            handle, spec_id = outcome.value
            return RemoteEnv(self, slot, actor, handle, spec_id, outcome.changed)
        raise AssertionError("unreachable")

    def factory(self, env_id: str, kwargs: dict[str, Any]) -> "RemoteEnvFactory":
        """A zero-argument env constructor for the rollout engine; one env is built (and
        closed) now, so a wrong id or argument fails here."""
        self.make_env(env_id, kwargs).close()
        return RemoteEnvFactory(self, env_id, dict(kwargs))

    # --- bookkeeping, called by the proxies ----------------------------------------------------

    def adopt(self, slot: int, actor: Any) -> None:
        """A fork was made on `actor`: one more open env there."""
        with self._lock:
            if self._actors[slot] is actor:
                self._open[slot] += 1

    def forget(self, slot: int, actor: Any) -> None:
        """An env of `actor` was closed."""
        with self._lock:
            if self._actors[slot] is actor:
                self._open[slot] = max(0, self._open[slot] - 1)

    def replace(self, slot: int, dead: Any) -> None:
        """`dead` (the worker in `slot`) died: start a new worker in its place (once, however
        many of its envs report it). Its envs are gone; new envs go to live workers."""
        with self._lock:
            if self._closed or self._actors[slot] is not dead:
                return
            fresh = self._new_actor()
            self._actors[slot] = fresh
            self._open[slot] = 0
            self.info[slot] = {}
            # Started now (imports, sandbox pool) while the rollout goes on; the first env
            # made on it waits for the start and checks it.
            self._starting[slot] = fresh.start.remote()
            self.replaced += 1
        try:
            ray.kill(dead, no_restart=True)
        except Exception:  # noqa: BLE001 - it is dead already
            pass

    # --- shutdown ----------------------------------------------------------------------------

    def open_envs(self) -> list[int]:
        """Open envs per worker, as counted by the trainer."""
        with self._lock:
            return list(self._open)

    def actors(self) -> list[Any]:
        """The live actors, by slot (for tests and diagnostics)."""
        with self._lock:
            return list(self._actors)

    def close(self, timeout: float = 60.0) -> None:
        """Close every worker's envs and sandbox pool, then kill the actors (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            actors = list(self._actors)
            starting = dict(self._starting)
        pending = []
        for slot, actor in enumerate(actors):
            # A worker still waiting to be placed, or stuck in its start, holds no envs: it is
            # killed without waiting for a shutdown it would never run.
            if slot in starting and not ray.wait([starting[slot]], timeout=0)[0]:
                continue
            try:
                pending.append(actor.shutdown.options(concurrency_group=LIFECYCLE).remote())
            except Exception:  # noqa: BLE001 - a dead actor has nothing to close
                pass
        if pending:
            # Sandbox containers must be stopped by their worker; a dead or stuck one is killed.
            ray.wait(pending, num_returns=len(pending), timeout=timeout)
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001
                pass

    def __enter__(self) -> "EnvWorkerGroup":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals -----------------------------------------------------------------------------

    def _new_actor(self) -> Any:
        return self._actor_class.remote(*self._init_args)

    def _started(self, slot: int, ref: Any) -> dict[str, Any]:
        """The outcome of worker `slot`'s `start()` call, waited for at most `start_timeout`."""
        try:
            outcome = ray.get(ref, timeout=self._start_timeout)
        except GetTimeoutError:
            available = ray.available_resources().get("CPU", 0.0)
            total = ray.cluster_resources().get("CPU", 0.0)
            raise WorkerStartTimeout(
                f"env worker {slot} did not start within {self._start_timeout:g} s: Ray could not place it "
                f"(each worker asks for {self._num_cpus:g} CPUs; {available:g} of the cluster's {total:g} "
                "are free) or its start hangs (its sandbox pool); lower ray.workers or "
                "ray.num_cpus_per_worker, or give Ray more CPUs") from None
        if outcome.error is not None:
            raise outcome.error
        return outcome.value

    def _check_replacement(self, slot: int, actor: Any, ref: Any) -> None:
        """Wait for the start of the replacement `actor` in `slot` (once); a replacement that
        died meanwhile raises `EnvWorkerLost` like any call on it."""
        try:
            info = self._started(slot, ref)
        except RayActorError as exc:
            raise worker_lost(self, slot, actor, exc) from None
        with self._lock:
            if self._actors[slot] is actor and self._starting.get(slot) is ref:
                del self._starting[slot]
                self.info[slot] = info


class RemoteEnvFactory:
    """`make_env()` for the rollout engine: a new RemoteEnv of one env id and its kwargs."""

    def __init__(self, group: EnvWorkerGroup, env_id: str, kwargs: dict[str, Any]) -> None:
        self.group, self.env_id, self.kwargs = group, env_id, kwargs

    def __call__(self) -> RemoteEnv:
        return self.group.make_env(self.env_id, self.kwargs)

    def __repr__(self) -> str:
        return f"RemoteEnvFactory({self.env_id!r}, {self.kwargs!r})"
