"""Sampling with vLLM in this process (the `vllm` backend), with the trainer's weights synced in.

`VLLMGenerator.from_config` saves the trainer's model in Hugging Face format to a temporary
directory, starts a `vllm.LLM` engine on it (vLLM runs its engine core in a child process) and
keeps it for the whole run. After every update the trainer calls `sync_weights(model)`, which
hands the new state dict to agentrl's worker extension (`agentrl.generation.vllm_worker`) and
clears the engine's prefix cache, whose keys and values belong to the old weights.

How the `Generator` contract (agentrl/generation/base.py) maps onto vLLM:

- token ids in and out: prompts go in as `{"prompt_token_ids": ...}`; `token_ids` are vLLM's
  output ids, and `text` is this tokenizer's decoding of them (vLLM's own `text` may carry
  bytes of the prompt when the prompt ends inside a UTF-8 character).
- log-probs after temperature: the engine runs with `logprobs_mode="processed_logprobs"`,
  which vLLM computes after temperature and after top-p. With top_p < 1 they would be
  renormalised over the nucleus, so this backend refuses top_p < 1 (use `hf`).
  Greedy rows (temperature 0) get log-probs at temperature 1, as the contract says.
- stop strings stay in the output (`include_stop_str_in_output`); a "stop" finish whose
  `stop_reason` is a string is a stop-string stop, any other is an EOS stop.
- per-row seeds: every request carries its own `seed`.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from typing import Any

import torch
from safetensors.torch import save_file

from agentrl.config import ConfigError, VLLMGenerationConfig
from agentrl.generation.seeding import row_seeds
from agentrl.generation.vllm_worker import EXTENSION, LOAD_METHOD, unshared_cpu_tensors, write_weights_file
from agentrl.types import Completion, FinishReason, SamplingParams

#: at most this many top log-probs per position can be asked for (vLLM's `max_logprobs`)
MAX_TOP_LOGPROBS = 64
#: the adapter ranks vLLM's LoRA support is built for (`max_lora_rank`)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class VLLMGenerator:
    """A `Generator` on an in-process `vllm.LLM` engine whose weights follow the trainer's.

    Build it with `from_config` (what `generation: {backend: vllm}` does) or hand it an engine
    you made yourself (started with `worker_extension_cls=agentrl.generation.vllm_worker.EXTENSION`
    and `logprobs_mode="processed_logprobs"`). Call `close()` to free the engine.
    """

    #: fills `Completion.top_logprobs` from vLLM's per-position top log-probs
    returns_top_logprobs = True

    def __init__(self, llm: Any, tokenizer: Any, *, model_dir: str | None = None,
                 adapter_sync: bool = False) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        # The temporary checkpoint vLLM was started from (removed on close), if we made it.
        self._model_dir = model_dir
        # generation.lora_sync=adapter: the engine holds the frozen base weights and samples with
        # the newest adapter, a `LoRARequest` under a new id after every sync.
        self.adapter_sync = adapter_sync
        self._lora: Any = None
        self._adapter_version = 0

    @classmethod
    def from_config(
        cls,
        settings: VLLMGenerationConfig,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        max_batch_size: int,
        max_model_len: int,
        autocast: torch.dtype | None = None,
    ) -> VLLMGenerator:
        """Start an engine on `model`'s current weights (a DDP/FSDP wrapper is unwrapped; a peft
        LoRA model's adapters are merged, or, with `settings.lora_sync="adapter"`, handed to
        vLLM's LoRA support on the base weights)."""
        from vllm import LLM

        from agentrl.models.lora import is_peft_model, unwrap_model

        _check_head_size(model)
        adapter_sync = settings.lora_sync == "adapter"
        lora_settings: dict[str, Any] = {}
        if adapter_sync:
            peft_model = unwrap_model(model)
            if not is_peft_model(peft_model):
                raise ConfigError("generation.lora_sync=adapter sends LoRA adapters, but this model has none; "
                                  "set model.lora (docs/scale.md, section 5) or generation.lora_sync=merged")
            rank = max(c.r for c in peft_model.peft_config.values())
            lora_settings = {"enable_lora": True, "max_loras": 1,
                             "max_lora_rank": min(r for r in VLLM_LORA_RANKS if r >= rank)}
        # vLLM forks its engine and worker processes by default on a CPU; a forked worker inherits
        # every module this process imported, and vLLM's start-up scan of them trips over some
        # (llvmlite's wrappers, imported by the tool stack). Spawned processes start clean.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        model_dir = tempfile.mkdtemp(prefix="agentrl-vllm-")
        try:
            hf_model = _save_for_vllm(model, tokenizer, model_dir, merge=not adapter_sync)
            dtype = autocast or next(hf_model.parameters()).dtype
            llm = LLM(
                model=model_dir,
                tokenizer=model_dir,
                dtype=str(dtype).removeprefix("torch."),
                max_model_len=max_model_len,
                max_num_seqs=max_batch_size,
                enforce_eager=settings.enforce_eager,
                gpu_memory_utilization=settings.gpu_memory_utilization,
                kv_cache_memory_bytes=int(settings.kv_cache_gb * 2**30),
                logprobs_mode="processed_logprobs",
                max_logprobs=MAX_TOP_LOGPROBS,
                worker_extension_cls=EXTENSION,
                # A seeded request split by chunked prefill crashes vLLM's CPU sampler
                # ("CPU Generator does not use offset"); prompts here are short anyway.
                enable_chunked_prefill=False,
                seed=0,
                **lora_settings,
            )
        except BaseException:
            shutil.rmtree(model_dir, ignore_errors=True)
            raise
        generator = cls(llm, tokenizer, model_dir=model_dir, adapter_sync=adapter_sync)
        if adapter_sync:
            generator.sync_weights(model)
        return generator

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, seeds: list[int] | None = None
    ) -> list[Completion]:
        """Sample one completion per prompt; see `agentrl.generation.Generator` for the contract."""
        from vllm import SamplingParams as VLLMSamplingParams

        _check_params(prompts, params, vocab_size=self.vocab_size)
        per_row = row_seeds(len(prompts), seeds, params.seed)
        requests = [
            VLLMSamplingParams(
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                stop=list(params.stop) or None,
                include_stop_str_in_output=True,
                skip_special_tokens=False,
                logprobs=max(params.top_logprobs, 1),
                seed=seed,
            )
            for seed in per_row
        ]
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], requests,
                                    use_tqdm=False, lora_request=self._lora)
        return [self._completion(output.outputs[0], params.top_logprobs) for output in outputs]

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Load `model`'s current weights into the engine (LoRA adapters merged) and drop the
        prefix cache computed with the old ones. With adapter sync, only the adapter travels."""
        assert self._model_dir is not None, "sync_weights needs the directory from_config made"
        if self.adapter_sync:
            self._load_adapter(model)
            return
        path, count = write_weights_file(model, self._model_dir)
        loaded = self.llm.collective_rpc(LOAD_METHOD, kwargs={"path": path})
        if any(n != count for n in loaded):
            raise RuntimeError(f"vLLM loaded {loaded} tensors of {count}: a partial weight update")
        self.llm.reset_prefix_cache()

    def _load_adapter(self, model: torch.nn.Module) -> None:
        """Save the adapter under a new version; vLLM loads it at the next request that names it
        (a new id: vLLM caches adapters by id). The previous version's files are removed."""
        from vllm.lora.request import LoRARequest

        from agentrl.models.lora import unwrap_model

        assert self._model_dir is not None
        self._adapter_version += 1
        path = os.path.join(self._model_dir, f"adapter-{self._adapter_version}")
        unwrap_model(model).save_pretrained(path)
        if self._lora is not None:
            shutil.rmtree(self._lora.lora_path, ignore_errors=True)
        self._lora = LoRARequest(f"policy-{self._adapter_version}", self._adapter_version, path)
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Stop the engine (its child process) and remove the temporary checkpoint."""
        llm, self.llm = self.llm, None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
            if shutdown is not None:
                shutdown()
            del llm
        if self._model_dir is not None:
            shutil.rmtree(self._model_dir, ignore_errors=True)
            self._model_dir = None

    def __enter__(self) -> VLLMGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _completion(self, output: Any, top_k: int) -> Completion:
        token_ids = [int(t) for t in output.token_ids]
        positions = output.logprobs or []
        logprobs = [float(position[token].logprob) for position, token in zip(positions, token_ids)]
        if len(logprobs) != len(token_ids):
            raise RuntimeError(f"vLLM returned {len(token_ids)} tokens but {len(logprobs)} log-probs")
        top = None
        if top_k > 0:
            # Each position holds the top-k and the sampled token; a sampled token outside the
            # top-k is smaller than all of them, so the k largest values are the top-k.
            top = [sorted((float(v.logprob) for v in position.values()), reverse=True)[:top_k]
                   for position in positions]
        finish: FinishReason
        stop_string = None
        if output.finish_reason == "length":
            finish = "length"
        elif isinstance(output.stop_reason, str):
            finish, stop_string = "stop", output.stop_reason
        else:
            finish = "eos"
        text = self.tokenizer.decode(token_ids, skip_special_tokens=False)
        return Completion(token_ids=token_ids, logprobs=logprobs, finish_reason=finish, text=text,
                          stop_string=stop_string, top_logprobs=top)


def _save_for_vllm(model: torch.nn.Module, tokenizer: Any, directory: str, *, merge: bool = True) -> torch.nn.Module:
    """Write `model` (unwrapped; adapters merged, or left out with `merge=False`) and `tokenizer`
    to `directory` in Hugging Face format; returns the plain transformers model whose config was
    written."""
    from agentrl.models.lora import adapters_disabled, inference_state_dict, is_peft_model, unwrap_model

    hf_model = unwrap_model(model)
    if is_peft_model(hf_model):
        hf_model = hf_model.get_base_model()
    if merge:
        weights = inference_state_dict(model)
    else:
        with adapters_disabled(model):  # the base weights alone
            weights = inference_state_dict(model)
    # Not `hf_model.save_pretrained`: under torchrun it writes on rank 0 only, and every rank
    # starts its own engine. The files are the ones vLLM reads: config, generation config (its
    # extra EOS ids), the weights as one safetensors file, the tokenizer.
    config = copy.deepcopy(hf_model.config)
    config.architectures = [type(hf_model).__name__]
    config.save_pretrained(directory)
    if getattr(hf_model, "generation_config", None) is not None:
        hf_model.generation_config.save_pretrained(directory)
    save_file(unshared_cpu_tensors(weights), os.path.join(directory, "model.safetensors"),
              metadata={"format": "pt"})
    tokenizer.save_pretrained(directory)
    return hf_model


def _check_head_size(model: torch.nn.Module) -> None:
    """vLLM's CPU attention runs a fixed set of head sizes; refuse others before its worker
    fails with a long trace."""
    import vllm.platforms

    if not vllm.platforms.current_platform.is_cpu():
        return
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    from agentrl.models.lora import unwrap_model

    config = unwrap_model(model).config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim not in supported:
        raise ValueError(f"generation.backend=vllm: vLLM's CPU attention supports head sizes {supported}, "
                         f"this model's is {head_dim} (hidden_size / num_attention_heads); use a model "
                         "with one of those, or generation.backend=hf")


def _check_params(prompts: list[list[int]], params: SamplingParams, *, vocab_size: int) -> None:
    """Reject what this backend cannot sample to the contract, naming the fix."""
    if params.top_p != 1.0:
        raise ValueError(
            f"generation.backend=vllm samples with top_p=1 only (got {params.top_p}): vLLM's "
            "log-probs come after top-p truncation, the trainer needs them before it. Set "
            "rollout.top_p=1 or use generation.backend=hf")
    if params.temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {params.temperature}.")
    if params.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {params.max_new_tokens}.")
    if not 0 <= params.top_logprobs <= MAX_TOP_LOGPROBS:
        raise ValueError(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}] with vLLM, got "
                         f"{params.top_logprobs}.")
    if any(s == "" for s in params.stop):
        raise ValueError("Stop strings must be non-empty; remove the empty string from stop.")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"Prompt {i} is empty; a causal LM needs at least one token to condition on.")
        if min(prompt) < 0 or max(prompt) >= vocab_size:
            raise ValueError(f"Prompt {i} holds a token id outside the vocabulary [0, {vocab_size}).")
