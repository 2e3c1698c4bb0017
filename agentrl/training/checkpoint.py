"""Checkpoints: model weights (Hugging Face format), optimizer, schedule, RNG and loop state.

A checkpoint is a directory `checkpoints/iter_XXXXXX` holding the state *before* iteration
XXXXXX runs. `--resume` loads the newest complete one; the loop then continues with the same task order
and RNG state. A run killed at any moment (Ctrl-C, `kill -9`, the out-of-memory killer) resumes
without losing or repeating anything.

What a checkpoint holds: the model in Hugging Face format (`save_pretrained`), the tokenizer,
`trainer.pt` (optimizer, schedule, RNG) and `trainer_state.json` (loop state). For a model with
LoRA adapters (`model.lora`, `agentrl.models.lora`) the model part is the adapter alone, as peft
saves it (`adapter_config.json` + `adapter_model.safetensors`), not a copy of the frozen base:
the base is the run's starting model, which a resumed run loads again before the adapter.

Writing is crash-safe:

- A checkpoint is written under a temporary name, its files are flushed to disk, and
  `manifest.json`, written last, lists every file with its size; only then is the directory
  renamed to `iter_XXXXXX`. `latest_checkpoint()` returns only a directory whose manifest is
  there and whose files all have the sizes it lists, so a half-written checkpoint is never
  loaded.
- An old checkpoint is first renamed out of the `iter_` names and only then deleted, so a kill
  during the deletion leaves a `.trash-` directory that nothing loads (the next save removes it).
- The run's append-only logs are part of the state: the trainer records their lengths in a
  checkpoint's loop state and cuts them back when it resumes (`agentrl.training.metrics`), so
  an iteration that runs again after a kill logs once.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agentrl.config import ConfigError
from agentrl.models.lora import (
    ADAPTER_CONFIG,
    is_peft_model,
    load_adapter_weights,
    unwrap_model,
)
from agentrl.models.sharding import (
    full_model_state,
    full_optimizer_state,
    is_sharded,
    load_full_model_state,
    load_full_optimizer_state,
)
from agentrl.training.durable import fsync_path

_PREFIX = "iter_"
_TEMPORARY = ".tmp-"  # a checkpoint being written
_TRASH = ".trash-"    # a checkpoint being deleted
MANIFEST = "manifest.json"


def gather_sharded_state(model: Any, optimizer: torch.optim.Optimizer) -> tuple[dict, dict] | None:
    """Under FSDP (`train.parallel: fsdp`): the whole model and optimizer states, gathered from
    every rank's shards, for `save_checkpoint(..., sharded_state=...)`. A collective: every
    rank calls it, rank 0 writes. None for a model that is not sharded (nothing to gather)."""
    if not is_sharded(model):
        return None
    return full_model_state(model), full_optimizer_state(model, optimizer)


def save_checkpoint(
    run_dir: Path, iteration: int, model: Any, tokenizer: Any, optimizer: torch.optim.Optimizer,
    scheduler: Any, state: dict[str, Any], keep: int = 2,
    sharded_state: tuple[dict, dict] | None = None,
) -> Path:
    """Save the state *before* `iteration` runs (so resuming runs `iteration` next).

    `state` is the loop's own state (JSON), e.g. the task counter and the logs' lengths. The
    newest `keep` checkpoints are kept. `sharded_state`: what `gather_sharded_state` gathered
    from a sharded model, written in place of the shards this rank holds.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    final = checkpoint_dir(run_dir, iteration)
    tmp = root / f"{_TEMPORARY}{final.name}"
    # A PeftModel saves its adapter only; a DDP wrapper saves the model it holds. A sharded
    # model saves the whole weights gathered for it, and its optimizer state is keyed by
    # parameter name (the form in which FSDP gathers and loads it).
    model_state, optimizer_state = sharded_state or (None, optimizer.state_dict())
    unwrap_model(model).save_pretrained(tmp, state_dict=model_state)
    tokenizer.save_pretrained(tmp)
    torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                "rng": _rng_state()}, tmp / "trainer.pt")
    (tmp / "trainer_state.json").write_text(json.dumps({"iteration": iteration, **state}, indent=2))
    _write_manifest(tmp)
    replaced = None
    if final.exists():  # the same iteration saved again: the new copy replaces it
        replaced = final.rename(final.with_name(_TRASH + final.name))
    tmp.rename(final)
    fsync_path(root)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    for old in list_checkpoints(run_dir)[:-keep]:
        _delete(old)
    return final


class CheckpointMismatch(ConfigError):
    """A checkpoint that does not fit the model it is loaded into (adapter vs full weights):
    the recipe that resumes a run differs from the one that saved it."""


def load_policy_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a checkpoint's weights into `model` in place (the optimizer keeps its parameters).

    A model with LoRA adapters gets the checkpoint's adapter weights (its frozen base stays as
    it is); any other model gets every weight.
    """
    from transformers import AutoModelForCausalLM

    path = Path(path)
    model = unwrap_model(model)
    holds_adapter = (path / ADAPTER_CONFIG).is_file()
    if is_peft_model(model):
        if not holds_adapter:
            raise CheckpointMismatch(f"{path} holds full model weights but the recipe trains LoRA adapters "
                                     "(model.lora): resume it without model.lora, or start a new run")
        load_adapter_weights(model, path)
        return
    if holds_adapter:
        raise CheckpointMismatch(f"{path} holds a LoRA adapter but the recipe trains full weights: resume it "
                                 "with the model.lora settings it was trained with")
    weights = AutoModelForCausalLM.from_pretrained(path, dtype=next(model.parameters()).dtype)
    load_full_model_state(model, weights.state_dict())  # (a sharded model keeps its slices)


def checkpoint_dir(run_dir: Path, iteration: int) -> Path:
    """Where the checkpoint of `iteration` is (or would be) saved."""
    return Path(run_dir) / "checkpoints" / f"{_PREFIX}{iteration:06d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(_PREFIX) and is_complete(p))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def is_complete(path: Path) -> bool:
    """Whether a checkpoint directory holds every file its manifest lists, at the listed size."""
    path = Path(path)
    if not (path / MANIFEST).exists() and path.is_dir():
        return _is_complete_without_manifest(path)
    try:
        files = json.loads((path / MANIFEST).read_text())["files"]
        return all((path / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _is_complete_without_manifest(path: Path) -> bool:
    """Checkpoints written before manifests: complete when the files that make one are there
    (a kill while deleting one removed some of them)."""
    names = {p.name for p in path.iterdir()}
    weights = {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"}
    return {"config.json", "trainer.pt", "trainer_state.json"} <= names and bool(weights & names)


def load_trainer_state(path: Path, optimizer: torch.optim.Optimizer, scheduler: Any,
                       model: torch.nn.Module | None = None) -> dict[str, Any]:
    """Restore optimizer, schedule and RNG from a checkpoint; return its loop state.

    `model`: the optimizer's model, needed for a state keyed by parameter name (saved by a
    sharded run) and for loading into a sharded model."""
    saved = torch.load(Path(path) / "trainer.pt", weights_only=False)
    by_name = any(isinstance(key, str) for key in saved["optimizer"].get("state", {}))
    if model is not None and (by_name or is_sharded(model)):
        if not by_name:
            raise CheckpointMismatch(f"{path} was saved by a train.parallel=ddp run, whose optimizer state "
                                     "FSDP cannot load; resume it with train.parallel=ddp")
        load_full_optimizer_state(model, optimizer, saved["optimizer"])
    else:
        optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    _set_rng_state(saved["rng"])
    return json.loads((Path(path) / "trainer_state.json").read_text())


# --- internals ---------------------------------------------------------------------------------


def _write_manifest(directory: Path) -> None:
    """Flush every file of `directory` to disk, then write the manifest listing them (last)."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        fsync_path(path)
        files[path.relative_to(directory).as_posix()] = path.stat().st_size
    manifest = directory / MANIFEST
    manifest.write_text(json.dumps({"files": files}, indent=1))
    fsync_path(manifest)
    fsync_path(directory)


def _delete(checkpoint: Path) -> None:
    """Rename out of the checkpoint names first, so that a kill mid-deletion leaves nothing
    that looks like a checkpoint."""
    trash = checkpoint.with_name(_TRASH + checkpoint.name)
    shutil.rmtree(trash, ignore_errors=True)
    checkpoint.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_leftovers(root: Path) -> None:
    """Checkpoints half written or half deleted when an earlier run was killed."""
    for path in root.iterdir():
        if path.name.startswith((_TEMPORARY, _TRASH)):
            shutil.rmtree(path, ignore_errors=True)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
