"""agentrl's extension of vLLM's worker: load the trainer's new weights into a running engine.

vLLM imports this module inside its worker (engine argument
`worker_extension_cls="agentrl.generation.vllm_worker.WeightSyncExtension"`, or
`--worker-extension-cls` for `vllm serve`) and adds the methods of `WeightSyncExtension` to
the worker, where `LLM.collective_rpc(name, ...)` or a server's dev-mode `POST /collective_rpc`
can call them.

Why the linear layers are re-dispatched: on a CPU, vLLM packs every linear layer's weight once
after loading (oneDNN or its own packed GEMM) and then empties the layer's `weight`. A packed
copy never sees a later `load_weights`, and an emptied `weight` cannot even receive one: the
engine would keep sampling from the first weights while reporting no error. Importing this
module therefore makes vLLM's CPU linear layers (and the LM head) compute with `F.linear` on
their own `weight`, which `load_weights` then updates in place. This costs some of vLLM's CPU
speed (docs/scale.md has the figures) and buys weights that can change.
"""

from __future__ import annotations

import os
from typing import Any

import torch

#: the worker-extension class name vLLM is given
EXTENSION = "agentrl.generation.vllm_worker.WeightSyncExtension"
#: the method a weight sync calls (over `collective_rpc`)
LOAD_METHOD = "agentrl_load_weights"


def _keep_weights_on_cpu() -> None:
    """Replace vLLM's CPU GEMM dispatch with one that keeps each layer's weight and uses
    `F.linear` on it. Layers look the dispatch function up when their weights are processed,
    after this module is imported, so patching the module attribute is enough."""
    from vllm.model_executor.layers import utils

    if getattr(utils.dispatch_cpu_unquantized_gemm, "_agentrl_keeps_weights", False):
        return
    original = utils.dispatch_cpu_unquantized_gemm

    def dispatch_keeping_weights(layer: torch.nn.Module, remove_weight: bool) -> None:
        weight = getattr(layer, "weight", None)
        if weight is None or weight.ndim != 2:
            original(layer, remove_weight)  # not a plain linear layer (conv, MoE experts)
            return
        layer.cpu_linear = torch.nn.functional.linear

    dispatch_keeping_weights._agentrl_keeps_weights = True  # type: ignore[attr-defined]
    utils.dispatch_cpu_unquantized_gemm = dispatch_keeping_weights


try:  # in the main agentrl venv vLLM is absent; the module must still import (docs, tests)
    _keep_weights_on_cpu()
except ImportError:
    pass


def unshared_cpu_tensors(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of `weights` where needed, tied tensors cloned (safetensors
    refuses tensors that share memory)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in weights.items():
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.data_ptr())
        out[name] = tensor
    return out


def write_weights_file(model: torch.nn.Module, directory: str | os.PathLike[str]) -> tuple[str, int]:
    """Save `model`'s inference weights (wrapper removed, LoRA adapters merged) as one
    safetensors file in `directory` for `agentrl_load_weights(path=...)`; returns the file's
    path and its number of tensors. Written under another name and renamed, so an engine never
    reads a half-written file. (A file, not tensors over the RPC: vLLM's engine RPC serializes
    tensors into nested lists.)"""
    from safetensors.torch import save_file

    from agentrl.models.lora import inference_state_dict

    weights = unshared_cpu_tensors(inference_state_dict(model))
    path = os.path.join(os.fspath(directory), "weights.safetensors")
    save_file(weights, path + ".partial")
    os.replace(path + ".partial", path)
    return path, len(weights)


class WeightSyncExtension:
    """Methods vLLM adds to its worker class (it sets `self.model_runner`)."""

    model_runner: Any

    def agentrl_load_weights(self, path: str) -> int:
        """Load a safetensors file of Hugging Face-named weights (`write_weights_file`) into
        the engine's model, in place; returns the number of tensors loaded. The caller resets
        the engine's prefix cache afterwards: cached keys and values belong to the old weights."""
        from safetensors.torch import load_file

        weights = load_file(path)
        with torch.no_grad():
            self.model_runner.model.load_weights(weights=iter(weights.items()))
        return len(weights)

    def agentrl_weight_checksum(self) -> float:
        """The sum of every parameter of the engine's model (tests compare it across a sync)."""
        model = self.model_runner.model
        with torch.no_grad():
            return float(sum(p.detach().double().sum() for p in model.parameters()))
