"""LoRA adapters through peft: only small low-rank matrices train, the base weights stay frozen.

A recipe with `model.lora: {r, alpha, target_modules}` wraps the policy in a peft `PeftModel`
(`apply_lora`). Each targeted linear layer then computes `W x + (alpha / r) * B A x`, where `W`
is the frozen base weight and `A` [r, in], `B` [out, r] are the adapter; `B` starts at zero, so
the wrapped model starts as exactly the base model.

What the rest of agentrl needs from such a model lives here:

- `is_peft_model` / `unwrap_model`: recognise the wrapper (also inside a DDP/FSDP `.module`).
- `inference_state_dict`: the plain Hugging Face state dict with the adapters merged into the
  base weights, for a generator that keeps its own copy of the weights (vLLM). The model is not
  touched: the merged weights are new tensors.
- `adapter_state_dict` / `adapter_config`: the adapter alone, for a generator that serves
  adapters itself (far fewer bytes to send).
- `load_adapter_weights`: restore a saved adapter into a live `PeftModel` (resume).
- `adapters_disabled`: run the base model, e.g. as the KL reference, without a second copy.
- `load_adapter_checkpoint`: a checkpoint's adapter on its base model (evaluation);
  `merge_adapter`: the same as one full model directory for serving
  (`python -m agentrl.models.lora merge CHECKPOINT OUT`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch

from agentrl.config import ConfigError

if TYPE_CHECKING:
    from agentrl.config import LoraConfig

#: Files peft's `save_pretrained` writes for an adapter.
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

_INSTALL_HINT = "pip install 'agentrl[lora]' (peft)"


class AdapterMismatch(ConfigError):
    """A saved adapter that does not fit the model's adapters (other targets or rank)."""


def _peft() -> Any:
    """The peft module, or one clear error saying how to install it."""
    try:
        import peft
    except ImportError as error:  # pragma: no cover - peft is part of the test install
        raise ConfigError(f"model.lora needs the peft package, which is not installed: {_INSTALL_HINT}") from error
    return peft


@contextlib.contextmanager
def _renamed_question_unwarned() -> Iterator[None]:
    """peft asks transformers `is_gradient_checkpointing`, which transformers 5 renamed (same
    answer); its deprecation warning says nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel / FSDP wrapper (`.module`), else `model`."""
    while isinstance(model, torch.nn.parallel.DistributedDataParallel) or (
        type(model).__name__ in {"FullyShardedDataParallel"} and hasattr(model, "module")
    ):
        model = model.module
    return model


def is_peft_model(model: torch.nn.Module) -> bool:
    """Whether `model` (or the model a DDP/FSDP wrapper holds) is a peft `PeftModel`."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(unwrap_model(model), PeftModel)


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """The distinct last names of the model's linear layers (what `target_modules` can name)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and name})


def check_target_modules(model: torch.nn.Module, settings: LoraConfig) -> None:
    """Raise a ConfigError, listing the linear layers there are, when a `target_modules` name
    matches no module of `model`.

    peft fails only when *no* name matches; a single misspelt name would silently train fewer
    layers than the recipe asks for, so every name has to match.
    """
    if settings.target_modules == "all-linear":
        return
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    missing = [target for target in settings.target_modules if target not in names]
    if missing:
        raise ConfigError(
            f"model.lora.target_modules: {', '.join(missing)} name no module of {type(model).__name__}; "
            f"its linear layers are {', '.join(linear_module_names(model))} (or use \"all-linear\")")


def apply_lora(model: torch.nn.Module, settings: LoraConfig, *, base: Path | None = None) -> torch.nn.Module:
    """Wrap `model` in a peft `PeftModel` with fresh LoRA adapters (`model.lora` of a recipe).

    Only the adapters require gradients afterwards; the base weights are frozen. The wrapped
    model computes exactly what `model` did until the adapters train (`B` starts at zero).
    Drawing the adapters' `A` uses torch's global RNG. A `target_modules` name that matches no
    module raises a ConfigError listing the names that exist.

    `base` is the directory holding `model`'s current weights, which a saved adapter records
    (`base_model_name_or_path`) so that evaluation and merging find it. By default it is the
    directory `model` was loaded from; a model trained since (the SFT warm-up) must name the
    directory it was saved to, or its adapters would later be put on the weights before training.
    """
    peft = _peft()
    check_target_modules(model, settings)
    targets = settings.target_modules if settings.target_modules == "all-linear" else list(settings.target_modules)
    config = peft.LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                             target_modules=targets, bias="none", task_type="CAUSAL_LM")
    with _renamed_question_unwarned():
        wrapped = peft.get_peft_model(model, config)
    recorded = _absolute_directory(base if base is not None else getattr(model, "name_or_path", None))
    if recorded is not None:  # (an absolute path: the base is found from any working directory)
        wrapped.peft_config[wrapped.active_adapter].base_model_name_or_path = recorded
    wrapped.train(model.training)
    return wrapped


def _absolute_directory(path: str | Path | None) -> str | None:
    """`path` made absolute when it names a local directory, else `path` unchanged (a model
    built in memory has none; a Hub id stays as it is)."""
    if not path:
        return None
    return str(Path(path).resolve()) if Path(path).is_dir() else str(path)


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(parameters that train, all parameters) of `model`."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


@torch.no_grad()
def inference_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The plain Hugging Face state dict of `model`, with LoRA adapters merged into the weights.

    For a model without adapters this is its `state_dict()` (a DDP wrapper's `.module` prefix
    removed; a model FSDP shards gathers its whole tensors: every rank must call this then). For a `PeftModel` the keys are those of the base model before wrapping
    (`...q_proj.weight`, no `base_layer`, no `lora_` entries) and each adapted weight is
    `W + scale * B @ A` as a new tensor: the model itself, adapters included, is left as it is,
    so training goes on unchanged after a weight sync.
    """
    model = unwrap_model(model)
    if not is_peft_model(model):
        from agentrl.models.sharding import full_model_state

        return full_model_state(model)
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if not isinstance(module, LoraLayer) or module.disable_adapters or module.merged:
            continue  # (an adapter merged in place is already in the base weight)
        adapters = [a for a in module.active_adapters if a in module.lora_A]
        if adapters:
            deltas[f"{name}.weight"] = sum(module.get_delta_weight(a) for a in adapters)
    merged: dict[str, torch.Tensor] = {}
    for key, value in base.state_dict().items():
        if any(part.startswith("lora_") for part in key.split(".")):
            continue
        plain = key.replace(".base_layer.", ".")
        if plain in deltas:
            value = value + deltas[plain].to(value.dtype)
        merged[plain] = value
    return merged


def adapter_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights alone, keyed as peft saves them (`adapter_model.safetensors`)."""
    model = unwrap_model(model)
    if not is_peft_model(model):
        raise TypeError(f"{type(model).__name__} has no LoRA adapters (model.lora is not set)")
    from peft import get_peft_model_state_dict

    return {key: value.detach() for key, value in get_peft_model_state_dict(model).items()}


def adapter_config(model: torch.nn.Module) -> dict[str, Any]:
    """The adapter's settings as peft writes them to `adapter_config.json` (r, lora_alpha,
    target_modules, ...), which a server loading the adapter needs next to its weights."""
    model = unwrap_model(model)
    if not is_peft_model(model):
        raise TypeError(f"{type(model).__name__} has no LoRA adapters (model.lora is not set)")
    config = model.peft_config[model.active_adapter].to_dict()
    return json.loads(json.dumps(config, default=sorted))  # sets (target_modules) -> lists


def load_adapter_weights(model: torch.nn.Module, directory: Path) -> None:
    """Copy the adapter saved in `directory` (peft's `save_pretrained`) into the live `PeftModel`.

    The parameters stay the same objects (an optimizer holding them keeps working). Raises
    AdapterMismatch when the saved adapter does not fit the model's (other targets or rank).
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    model = unwrap_model(model)
    weights_file = Path(directory) / ADAPTER_WEIGHTS
    if not weights_file.is_file():
        raise FileNotFoundError(f"no adapter weights at {weights_file}")
    saved = load_file(weights_file, device=str(next(model.parameters()).device))
    current = adapter_state_dict(model)
    expected = set(current)
    if set(saved) != expected:
        raise AdapterMismatch(
            f"the adapter in {directory} does not fit the model's adapters ({len(saved)} saved tensors, "
            f"{len(expected)} expected; e.g. {sorted(set(saved) ^ expected)[:2]}): was it trained with "
            "other model.lora.target_modules?")
    for key, value in saved.items():
        mine = current[key]
        if mine.shape != value.shape:
            raise AdapterMismatch(f"the adapter in {directory} has {key} of shape {tuple(value.shape)}, the model "
                             f"{tuple(mine.shape)}: was it trained with another model.lora.r?")
    set_peft_model_state_dict(model, saved)


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[None]:
    """Inside the block a `PeftModel` computes its base model (adapters off); any other
    model is left as it is."""
    model = unwrap_model(model)
    if not is_peft_model(model):
        yield
        return
    with model.disable_adapter():
        yield


def load_adapter_checkpoint(checkpoint: Path, *, base: Path | None = None, dtype: torch.dtype = torch.float32,
                            device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any]:
    """(model, tokenizer) of a directory holding an adapter (a LoRA run's checkpoint): the base
    model with the adapter on it, in eval mode. `base` is the model the adapter was trained on
    (default: the path recorded in its adapter_config.json)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint = Path(checkpoint)
    settings_file = checkpoint / ADAPTER_CONFIG
    if not settings_file.is_file():
        raise FileNotFoundError(f"{checkpoint} holds no adapter ({ADAPTER_CONFIG} is missing)")
    base = Path(base or json.loads(settings_file.read_text())["base_model_name_or_path"])
    if not (base / "config.json").is_file():  # (a moved or deleted run directory)
        raise FileNotFoundError(
            f"the LoRA adapter in {checkpoint} was trained on {base}, where no model is (config.json is "
            f"missing); merge it into its base model and use the result: python -m agentrl.models.lora "
            f"merge {checkpoint} MERGED --base BASE_MODEL_DIR")
    peft = _peft()
    with _renamed_question_unwarned():
        model = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=dtype), checkpoint)
    tokenizer_source = checkpoint if (checkpoint / "tokenizer_config.json").is_file() else base
    return model.to(device).eval(), AutoTokenizer.from_pretrained(tokenizer_source)


def merge_adapter(checkpoint: Path, out: Path, base: Path | None = None) -> Path:
    """Write a full Hugging Face model (adapters merged) and tokenizer to `out`, for serving.

    `checkpoint` holds an adapter (a LoRA run's checkpoint); `base` is the model it was trained
    on (default: the base path recorded in its adapter_config.json).
    """
    model, tokenizer = load_adapter_checkpoint(checkpoint, base=base)
    out = Path(out)
    model.merge_and_unload().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agentrl.models.lora",
                                     description="Merge a LoRA checkpoint into a full model for serving.")
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser("merge", help="write base + adapter as one Hugging Face model directory")
    merge.add_argument("checkpoint", type=Path, help="a checkpoint directory of a LoRA run")
    merge.add_argument("out", type=Path, help="where the merged model goes")
    merge.add_argument("--base", type=Path, default=None,
                       help="the base model (default: the one recorded in adapter_config.json)")
    args = parser.parse_args(argv)
    try:
        print(merge_adapter(args.checkpoint, args.out, args.base))
    except (FileNotFoundError, ConfigError) as error:
        parser.exit(1, f"error: {error}\n")


if __name__ == "__main__":
    _main()
