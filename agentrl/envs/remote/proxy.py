"""`RemoteEnv`: a TextEnv whose env lives in an env worker (a Ray actor).

The rollout engine drives a `RemoteEnv` like any env: `reset`, `step` (and `astep`, so a
round's steps of remote envs all wait together on one event loop instead of taking a thread
each), `fork`, `close`, and the prompt-building attributes (`system_prompt`, `stop_strings`,
`tool_specs`, `observation_role`, `max_turns`), which the proxy mirrors: the worker sends them
when the env is built and again whenever one changes. Any other attribute or method of the env
(`oracle_action`, `oracle_transcript`, a user's own) is looked up in the worker on first use.

An exception the env raises is raised here again, with its own class. A worker that died
(its process was killed, its node lost) makes every call of its envs raise `EnvWorkerLost`;
the engine treats an env that raises as an infrastructure failure (the trajectory is counted,
never trained on, and replaced), and the worker group puts a fresh worker in the dead one's
place for the envs made next.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import ray
from gymnasium.envs.registration import EnvSpec
from ray.exceptions import RayActorError

from agentrl.envs.base import TextEnv
from agentrl.envs.remote.worker import MIRRORED_ATTRIBUTES, Outcome, is_method_marker

if TYPE_CHECKING:
    from agentrl.envs.remote.workers import EnvWorkerGroup


#: The actor's concurrency group for closing envs (see `EnvWorkerGroup`).
LIFECYCLE = "lifecycle"


class EnvWorkerLost(RuntimeError):
    """The env worker that held this env died; the env and its state are gone."""


class RemoteEnv(TextEnv):
    """Proxy of the env with handle `handle` in worker `slot` of `group`.

    Made by `EnvWorkerGroup.make_env` and by `fork()`, not directly.
    """

    def __init__(self, group: "EnvWorkerGroup", slot: int, actor: Any, handle: int,
                 spec_id: str | None, attributes: dict[str, Any]) -> None:
        super().__init__()
        self._group, self._slot, self._actor, self._handle = group, slot, actor, handle
        self._closed = False
        self.spec = EnvSpec(id=spec_id, entry_point=None) if spec_id else None
        self._mirror(attributes)

    # --- the Gymnasium contract ----------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return self._wait(self._actor.reset.remote(self._handle, seed, _sendable_options(options)))

    def step(self, action: str):
        return self._wait(self._actor.step.remote(self._handle, action))

    async def astep(self, action: str):
        """`step` as a coroutine: the engine awaits all of a round's remote steps at once."""
        ref = self._actor.step.remote(self._handle, action)
        try:
            outcome = await ref
        except RayActorError as exc:
            raise worker_lost(self._group, self._slot, self._actor, exc) from None
        return self._unpack(outcome)

    def close(self) -> None:
        """Close the env in its worker (not waited for; closing twice is a no-op)."""
        if self._closed:
            return
        self._closed = True
        self._group.forget(self._slot, self._actor)
        try:
            self._actor.close.options(concurrency_group=LIFECYCLE).remote(self._handle)
        except RayActorError:  # a dead worker took the env with it
            pass

    # --- agentrl additions -----------------------------------------------------------------------

    def fork(self) -> "RemoteEnv":
        """A fork made by the env in its worker, hosted by the same worker."""
        outcome = self._outcome(self._actor.fork.remote(self._handle))
        attributes = {name: getattr(self, name) for name in MIRRORED_ATTRIBUTES if name in self.__dict__}
        attributes.update(outcome.changed)
        twin = RemoteEnv(self._group, self._slot, self._actor, outcome.value,
                         self.spec.id if self.spec else None, attributes)
        self._group.adopt(self._slot, self._actor)
        return twin

    def oracle_action(self) -> str:
        return self._remote_call("oracle_action")

    def mistaken_action(self) -> str:
        return self._remote_call("mistaken_action")

    def render(self) -> str | None:
        return self._remote_call("render")

    @property
    def worker_slot(self) -> int:
        """Which of the group's workers holds this env."""
        return self._slot

    def __getattr__(self, name: str) -> Any:
        """Attributes the proxy does not mirror: looked up in the worker (methods become
        forwarding functions, values are copied)."""
        if name.startswith("_"):  # private and special names (pickling, copying) stay local
            raise AttributeError(name)
        value = self._wait(self._actor.attribute.remote(self._handle, name))
        if is_method_marker(value):
            return self._forwarder(name)
        return value

    def __repr__(self) -> str:
        name = self.spec.id if self.spec else "env"
        return f"RemoteEnv({name}, worker {self._slot}, handle {self._handle})"

    # --- internals -----------------------------------------------------------------------------

    def _forwarder(self, method: str) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            return self._remote_call(method, *args, **kwargs)

        forward.__name__ = method
        return forward

    def _remote_call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._wait(self._actor.call.remote(self._handle, method, args, kwargs))

    def _wait(self, ref: Any) -> Any:
        return self._unpack(self._get(ref))

    def _outcome(self, ref: Any) -> Outcome:
        outcome = self._get(ref)
        if outcome.error is not None:
            raise outcome.error
        return outcome

    def _get(self, ref: Any) -> Outcome:
        return worker_outcome(self._group, self._slot, self._actor, ref)

    def _unpack(self, outcome: Outcome) -> Any:
        self._mirror(outcome.changed)
        if outcome.error is not None:
            raise outcome.error
        return outcome.value

    def _mirror(self, attributes: dict[str, Any]) -> None:
        for name, value in attributes.items():
            setattr(self, name, value)


def worker_outcome(group: "EnvWorkerGroup", slot: int, actor: Any, ref: Any) -> Outcome:
    """The outcome of a worker call; `EnvWorkerLost` when the worker died (the group is told,
    and starts a new worker in its place)."""
    try:
        return ray.get(ref)
    except RayActorError as exc:
        raise worker_lost(group, slot, actor, exc) from None


def worker_lost(group: "EnvWorkerGroup", slot: int, actor: Any, cause: RayActorError) -> EnvWorkerLost:
    """Tell the group that the worker in `slot` died (it starts a replacement) and say so."""
    group.replace(slot, actor)
    reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return EnvWorkerLost(f"env worker {slot} died ({reason}); its envs are gone, so their episodes "
                         "are infrastructure failures, and a new worker hosts the next envs")


def _sendable_options(options: dict[str, Any] | None) -> dict[str, Any] | None:
    """`reset` options without the group's tool cache, which holds futures of this process; the
    env in the worker keeps its own cache (results are the same, only cache hits differ)."""
    if not options or "tool_cache" not in options:
        return options
    return {key: value for key, value in options.items() if key != "tool_cache"}
