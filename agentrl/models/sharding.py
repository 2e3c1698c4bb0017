"""Whole weights of a policy that FSDP shards over the ranks (`train.parallel: fsdp`).

Under FSDP every parameter is a DTensor: each rank holds one slice of it. What needs the whole
tensors (a generator's weight sync, a checkpoint in Hugging Face format) gathers them here. The
gathers are collectives: every rank must call these functions at the same point, even a rank
that then throws the result away. For a model that is not sharded they return the ordinary
state dicts and communicate nothing.
"""

from __future__ import annotations

from typing import Any

import torch


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether FSDP shards `model`'s parameters (they are DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _whole() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Every rank gets every tensor whole (not only rank 0): each rank's generator syncs its own copy.
    return StateDictOptions(full_state_dict=True)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with whole tensors (collective under FSDP)."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_whole())


def load_full_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load whole tensors into `model`; a sharded model keeps its own slice of each."""
    if not is_sharded(model):
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_whole())


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state with whole tensors, keyed by parameter name (collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_whole())


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                              state: dict[str, Any]) -> None:
    """Load a state `full_optimizer_state` made (keyed by parameter name) into `optimizer`."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_whole())


def whole_tensor(value: torch.Tensor) -> torch.Tensor:
    """`value` made whole: a result computed from sharded tensors (e.g. the gradient norm under
    FSDP) is a DTensor; any other tensor is returned as it is."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value
