"""What `agentrl eval` samples from, and what it loads for that.

- `generation.backend` hf or vllm: a checkpoint directory (`--model DIR`, else a `model.path`
  that is not "tiny"), whose weights are loaded here and handed to the generator. A LoRA run's
  checkpoint holds the adapter alone: it goes on the base model its adapter_config.json names
  and is merged into it, so every backend samples one plain model.
- `generation.backend` openai: a server samples, so no weights are loaded; the engine still
  renders prompts and reads completions as token ids, so it needs the served model's tokenizer
  from a local directory: `--tokenizer DIR`, else the `--model` directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from agentrl.config import Config, ConfigError
from agentrl.models import load_model
from agentrl.models.lora import ADAPTER_CONFIG, load_adapter_checkpoint

#: The report file's name when none is given: <model>/eval/held_out.json, or
#: <run.out_dir>/<run.name>/eval/held_out.json when no checkpoint is named.
REPORT_NAME = "held_out"


def eval_policy(config: Config, model_dir: Path | None, tokenizer_dir: Path | None, *,
                dtype: torch.dtype) -> tuple[torch.nn.Module | None, Any]:
    """(model, tokenizer) for an evaluation with the recipe's generator; the model is None
    when a server samples. Raises ConfigError when neither a checkpoint nor a tokenizer is
    named, and FileNotFoundError for a directory that holds none."""
    if config.generation.backend == "openai":
        source = tokenizer_dir or model_dir
        if source is None:
            raise ConfigError(
                "agentrl eval with generation.backend=openai needs the served model's tokenizer: pass "
                "--tokenizer DIR (a local copy of the served checkpoint's tokenizer) or --model DIR")
        return None, load_tokenizer(source)
    checkpoint = model_dir or (Path(config.model.path) if config.model.path != "tiny" else None)
    if checkpoint is None:
        raise ConfigError(
            f"agentrl eval with generation.backend={config.generation.backend} samples from a checkpoint: "
            "pass --model DIR (a Hugging Face checkpoint directory), or evaluate a server with "
            "generation={backend: openai, base_url: URL, model: NAME} and --tokenizer DIR")
    if (Path(checkpoint) / ADAPTER_CONFIG).is_file():
        model, tokenizer = adapted_model(Path(checkpoint), dtype=dtype, device=config.model.device)
    else:
        model, tokenizer = load_model(checkpoint, dtype=dtype, device=config.model.device)
    if tokenizer_dir is not None:
        tokenizer = load_tokenizer(tokenizer_dir)
    return model, tokenizer


def adapted_model(checkpoint: Path, *, dtype: torch.dtype, device: str) -> tuple[torch.nn.Module, Any]:
    """(model, tokenizer) of a checkpoint holding a LoRA adapter: the base model recorded in its
    adapter_config.json with the adapter merged into the weights (the same outputs as base +
    adapter, and a plain model that any generator takes). A base that is gone is a
    FileNotFoundError naming the merge command."""
    model, tokenizer = load_adapter_checkpoint(checkpoint, dtype=dtype, device=device)
    return model.merge_and_unload().eval(), tokenizer


def load_tokenizer(directory: Path) -> Any:
    """The Hugging Face tokenizer saved in `directory` (a checkpoint or a tokenizer alone)."""
    directory = Path(directory)
    if not (directory / "tokenizer_config.json").is_file():
        raise FileNotFoundError(
            f"No tokenizer at {directory} (tokenizer_config.json is missing); pass the directory of "
            "the served checkpoint, or one its tokenizer was saved to (tokenizer.save_pretrained)")
    return AutoTokenizer.from_pretrained(directory)


def report_path(config: Config, model_dir: Path | None) -> Path:
    """Where the report goes when `--report` is not given."""
    if model_dir is not None:
        return Path(model_dir) / "eval" / f"{REPORT_NAME}.json"
    return Path(config.run.out_dir) / config.run.name / "eval" / f"{REPORT_NAME}.json"
