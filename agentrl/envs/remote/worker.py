"""`EnvWorker`: the process that hosts envs for a trainer elsewhere (run as a Ray actor).

One worker holds many envs, each under an integer handle, and at most one sandbox pool that
every env it hosts draws from (the recipe's `sandbox` section: "a sandbox pool per node"). The
trainer talks to each env through a `RemoteEnv` proxy, which sends the worker the env's handle
and the call. The env is built here, from its registered id and keyword arguments, after the
worker has imported the modules that register it, so a user's env code runs unchanged.

Every call answers with an `Outcome`: the method's value, the prompt-building attributes that
changed since the proxy last saw them (a system prompt that depends on the task, a fork's
`fork_exact`), or the exception the env raised. Returning the exception rather than letting it
escape the actor keeps its class, so the engine sees the `EnvForkError` or
`NotImplementedError` it knows how to handle.

This module does not import Ray: the class is plain Python, wrapped with `ray.remote` by
`agentrl.envs.remote.workers`, and testable in-process.
"""

from __future__ import annotations

import itertools
import os
import pickle
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

#: Attributes the rollout engine and the trainer read from an env, mirrored on its proxy.
MIRRORED_ATTRIBUTES = ("system_prompt", "stop_strings", "tool_specs", "observation_role", "max_turns",
                       "render_mode", "metadata", "fork_exact", "fork_note")
_MISSING = object()


class RemoteEnvError(RuntimeError):
    """An env raised an exception that cannot be sent back as it is (its class or its
    arguments do not pickle); the message carries its class name and text."""


@dataclass
class Outcome:
    """What a worker call returns to the proxy."""

    value: Any = None
    #: Mirrored attributes whose value changed since the proxy last received them.
    changed: dict[str, Any] = field(default_factory=dict)
    #: The exception the env raised (the proxy raises it again), or None.
    error: BaseException | None = None


@dataclass(frozen=True)
class SandboxSettings:
    """The sandbox pool a worker starts for its envs (the recipe's `sandbox` section)."""

    pool_size: int
    backend: str = "auto"
    start_workers: int = 2


class EnvWorker:
    """Envs by handle, and the sandbox pool they share.

    Args:
        sandbox: the pool to start for the hosted envs (None: no pool).
        imports: modules that register the user's envs (`env.imports`), imported once here.
        import_paths: directories put first on `sys.path` before importing, so modules next to
            the trainer's recipe import in the worker too (on one machine; a cluster ships
            them with Ray's `runtime_env`).
    """

    def __init__(self, sandbox: SandboxSettings | None = None, imports: tuple[str, ...] = (),
                 import_paths: tuple[str, ...] = ()) -> None:
        self._sandbox = sandbox
        self._imports = tuple(imports)
        self._import_paths = tuple(import_paths)
        self._pool: Any = None
        self._envs: dict[int, Any] = {}
        # The attribute values each proxy holds, so a call sends only what changed.
        self._seen: dict[int, dict[str, Any]] = {}
        self._handles = itertools.count()
        self._lock = threading.Lock()

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> Outcome:
        """Import the env modules and start the sandbox pool; the value says where this worker
        runs. Errors (a module that does not import, a sandbox backend that is missing) come
        back in the outcome, so the trainer reports them before any rollout."""
        try:
            for path in reversed(self._import_paths):
                if path not in sys.path:
                    sys.path.insert(0, path)
            import agentrl.envs  # noqa: F401  (registers the built-in envs)
            from agentrl.envs.registry import import_env_module

            for module in self._imports:
                import_env_module(module)
            if self._sandbox is not None and self._sandbox.pool_size > 0:
                from agentrl.sandboxes import SandboxPool

                self._pool = SandboxPool(self._sandbox.pool_size, self._sandbox.backend,
                                         start_workers=self._sandbox.start_workers)
        except Exception as exc:  # noqa: BLE001 - reported to the trainer, which raises it
            return Outcome(error=_sendable(exc))
        return Outcome(value={"pid": os.getpid(), "host": os.uname().nodename,
                              "pool_size": self._pool.size if self._pool is not None else 0})

    def shutdown(self) -> None:
        """Close every env (their sandboxes go back to the pool), then the pool."""
        with self._lock:
            envs, self._envs, self._seen = list(self._envs.values()), {}, {}
        for env in envs:
            try:
                env.close()
            except Exception:  # noqa: BLE001 - closing the rest matters more
                pass
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def open_envs(self) -> int:
        """How many envs this worker holds now."""
        with self._lock:
            return len(self._envs)

    # --- env calls ------------------------------------------------------------------------------

    def create(self, env_id: str, kwargs: dict[str, Any]) -> Outcome:
        """Build the env `env_id(**kwargs)` (with this worker's pool as `pool` when it has
        one); the value is its handle and all its mirrored attributes come along."""
        try:
            from agentrl.envs.registry import make_env

            kwargs = dict(kwargs)
            if self._pool is not None:
                kwargs["pool"] = self._pool
            env = make_env(env_id, **kwargs)
            spec = getattr(env, "spec", None)
            spec_id = getattr(spec, "id", None)
        except Exception as exc:  # noqa: BLE001 - the proxy raises it in the trainer
            return Outcome(error=_sendable(exc))
        handle = self._add(env)
        return Outcome(value=(handle, spec_id), changed=self._changes(handle, env))

    def reset(self, handle: int, seed: int | None, options: dict[str, Any] | None) -> Outcome:
        return self._call(handle, "reset", (), {"seed": seed, "options": options})

    def step(self, handle: int, action: str) -> Outcome:
        return self._call(handle, "step", (action,), {})

    def call(self, handle: int, method: str, args: tuple, kwargs: dict[str, Any]) -> Outcome:
        """Any other method of the env (`oracle_action`, `render`, a user's own)."""
        return self._call(handle, method, args, kwargs)

    def attribute(self, handle: int, name: str) -> Outcome:
        """The env's attribute `name`: its value, or the marker "method" for a method (the
        proxy then forwards calls to it); an AttributeError when the env has none."""
        env = self._env(handle)
        try:
            value = getattr(env, name)
        except Exception as exc:  # noqa: BLE001 - AttributeError included: the proxy raises it
            return Outcome(error=_sendable(exc))
        if callable(value):
            return Outcome(value=_METHOD)
        try:
            pickle.dumps(value)
        except Exception as exc:  # noqa: BLE001 - a sandbox handle, a lock
            return Outcome(error=AttributeError(
                f"{type(env).__name__}.{name} holds a {type(value).__name__}, which cannot be sent "
                f"from the env worker ({type(exc).__name__}); read it inside the env instead"))
        return Outcome(value=value)

    def fork(self, handle: int) -> Outcome:
        """A fork of the env, hosted here too: the value is the fork's handle."""
        env = self._env(handle)
        try:
            twin = env.fork()
        except Exception as exc:  # noqa: BLE001 - EnvForkError included: the engine replays then
            return Outcome(error=_sendable(exc))
        fork_handle = self._add(twin)
        return Outcome(value=fork_handle, changed=self._changes(fork_handle, twin))

    def close(self, handle: int) -> None:
        """Close the env and forget it (a handle closed twice is a no-op)."""
        with self._lock:
            env = self._envs.pop(handle, None)
            self._seen.pop(handle, None)
        if env is not None:
            env.close()

    # --- internals -----------------------------------------------------------------------------

    def _add(self, env: Any) -> int:
        with self._lock:
            handle = next(self._handles)
            self._envs[handle] = env
            self._seen[handle] = {}
        return handle

    def _env(self, handle: int) -> Any:
        with self._lock:
            env = self._envs.get(handle)
        if env is None:
            raise KeyError(f"env worker {os.getpid()} holds no env {handle} (closed already?)")
        return env

    def _call(self, handle: int, method: str, args: tuple, kwargs: dict[str, Any]) -> Outcome:
        env = self._env(handle)
        try:
            value = getattr(env, method)(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the proxy raises it in the trainer
            return Outcome(error=_sendable(exc), changed=self._changes(handle, env))
        return Outcome(value=value, changed=self._changes(handle, env))

    def _changes(self, handle: int, env: Any) -> dict[str, Any]:
        """The mirrored attributes whose value differs from what the proxy holds."""
        seen = self._seen.get(handle)
        if seen is None:
            return {}
        changed = {}
        for name in MIRRORED_ATTRIBUTES:
            value = getattr(env, name, _MISSING)
            if value is _MISSING:
                continue
            if name not in seen or seen[name] != value:
                seen[name] = changed[name] = value
        return changed


#: `EnvWorker.attribute`'s answer for a method.
_METHOD = "__agentrl_remote_method__"


def is_method_marker(value: Any) -> bool:
    return isinstance(value, str) and value == _METHOD


def _sendable(exc: BaseException) -> BaseException:
    """`exc` itself when it survives pickling (its class and message intact), else a
    RemoteEnvError naming it."""
    try:
        copy = pickle.loads(pickle.dumps(exc))
        if type(copy) is type(exc):
            return exc
    except Exception:  # noqa: BLE001 - any failure means: send a description instead
        pass
    return RemoteEnvError(f"{type(exc).__name__}: {exc}")
