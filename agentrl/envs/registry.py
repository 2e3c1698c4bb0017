"""Registration of agentrl's environments with Gymnasium.

`import agentrl.envs` registers every built-in env, so `gymnasium.make("agentrl/Arithmetic-v0")`
works. A user's own env registers the same way, with `agentrl.envs.register`.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import gymnasium

NAMESPACE = "agentrl"

# env id -> one-line description, for `agentrl env list`.
_DESCRIPTIONS: dict[str, str] = {}


def register(env_id: str, entry_point: str, description: str = "", /, **kwargs: Any) -> None:
    """Register an env with Gymnasium (idempotent) and remember it for `agentrl env list`.

    `entry_point` is "module.path:ClassName"; `kwargs` become its default constructor
    arguments (overridable in `gymnasium.make(env_id, **overrides)`). The first three
    arguments are positional-only, so a constructor may have an argument named `env_id`,
    `entry_point` or `description` (common in wrappers of other libraries' envs).
    """
    if env_id not in gymnasium.registry:
        gymnasium.register(id=env_id, entry_point=entry_point, kwargs=kwargs,
                           disable_env_checker=True, order_enforce=False)
    _DESCRIPTIONS[env_id] = description


def registered_envs() -> dict[str, str]:
    """agentrl env ids and their descriptions, sorted by id."""
    return dict(sorted(_DESCRIPTIONS.items()))


class UnknownEnvError(ValueError):
    """An env id that is not registered, or a module that should register it and cannot be
    imported; the message names the cause and the fix."""


def import_env_module(module: str) -> None:
    """Import the module that registers a user's envs (`--import`, `env.imports`, `module:Id`).

    The working directory comes first on the import path, as with `python -m`, so a module
    next to the recipe imports from the `agentrl` command too.
    """
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
            raise UnknownEnvError(
                f"cannot import {module!r} ({exc}); run from the folder that holds it, "
                "or install it, or fix the module name"
            ) from None
        raise UnknownEnvError(
            f"cannot import {module!r}: it needs the module {exc.name!r}, which is not installed; "
            "install the package that provides it"
        ) from None


def make_env(env_id: str, /, **kwargs: Any) -> gymnasium.Env:
    """`gymnasium.make` without the wrappers Gymnasium adds, with a clear unknown-id error.

    `env_id` may be Gymnasium's "module:Id": the module is imported first (it registers Id).
    The rollout engine drives envs directly (it needs `fork()` and the env's attributes), so
    it takes the unwrapped env.
    """
    module, _, bare_id = env_id.rpartition(":")
    if module:
        import_env_module(module)
    if bare_id not in gymnasium.registry:
        known = ", ".join(registered_envs()) or "(none)"
        raise UnknownEnvError(
            f"unknown env id {bare_id!r}; registered agentrl envs: {known}. "
            "An env of your own registers when its module is imported: pass --import MODULE "
            "(env.imports in a recipe) or write the id as MODULE:ID."
        )
    return gymnasium.make(bare_id, **kwargs).unwrapped
