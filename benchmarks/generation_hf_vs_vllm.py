"""Sampling throughput of the `hf` and `vllm` backends on the same model, and vLLM's weight sync.

Runs in `.venv-vllm` (`make vllm`):

    .venv-vllm/bin/python benchmarks/generation_hf_vs_vllm.py [--repeats 3]
        [--out docs/experiments/data/hf_vs_vllm.json]

Two Qwen2 models built from synthetic text (both with head size 64, which vLLM's CPU attention
supports): the demo's tiny model (hidden 256, 4 layers, about 3M parameters) and a larger one
(hidden 512, 8 layers, about 30M). For each, the same prompts (`--batch` rows of `--prompt-len`
random tokens, each row with its own seed) are sampled by `HFGenerator` and by `VLLMGenerator`
through agentrl's `Generator` contract (per-row seeds, log-probs after temperature), turns
interleaved (HF, vLLM, HF, vLLM, ...) so that load from other processes hits both alike; the
table keeps medians. Tokens/s counts generated tokens (rows that sample EOS stop early on both
sides alike). Then `VLLMGenerator.sync_weights` is timed after perturbing the weights: the
seconds a training run adds per update (`perf/weight_sync_s`).

vLLM's CPU build runs its linear layers through `F.linear` in agentrl's engine (the worker
extension keeps their weights updatable; agentrl/generation/vllm_worker.py says why), not its
prepacked GEMM kernels; a third arm, "stock vLLM", runs vLLM as it comes (weights that cannot be
updated) to show what that costs.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_result  # noqa: E402
from generation_throughput import synthetic_texts  # noqa: E402

from agentrl.config import VLLMGenerationConfig  # noqa: E402
from agentrl.generation import HFGenerator  # noqa: E402
from agentrl.models import build_tiny_model, load_model  # noqa: E402
from agentrl.types import SamplingParams  # noqa: E402

MODELS = {
    "tiny (hidden 256, 4 layers)": {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2,
                                     "intermediate_size": 768},
    "small (hidden 512, 8 layers)": {"hidden_size": 512, "num_layers": 8, "num_heads": 8, "num_kv_heads": 4,
                                      "intermediate_size": 1536},
}


def measure(name: str, shape: dict, folder: Path, args: argparse.Namespace) -> dict:
    from agentrl.generation.vllm import VLLMGenerator

    model_dir = build_tiny_model(synthetic_texts(), folder / name.split()[0], vocab_size=512, seed=0, **shape)
    model, tokenizer = load_model(model_dir)
    model.eval()
    parameters = sum(p.numel() for p in model.parameters())
    rng = random.Random(0)
    vocab = model.config.vocab_size
    prompts = [[rng.randrange(3, vocab) for _ in range(args.prompt_len)] for _ in range(args.batch)]
    seeds = list(range(args.batch))
    params = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens)
    max_len = args.prompt_len + args.max_new_tokens + 8
    hf = HFGenerator(model, tokenizer, max_batch_size=args.batch)
    started = time.perf_counter()
    vllm = VLLMGenerator.from_config(VLLMGenerationConfig(kv_cache_gb=1.0), model, tokenizer,
                                     max_batch_size=args.batch, max_model_len=max_len)
    startup = time.perf_counter() - started
    stock = VLLMGenerator(_stock_engine(vllm._model_dir, args.batch, max_len), tokenizer)
    sides = (("hf", hf), ("vllm", vllm), ("vllm_stock", stock))
    runs: dict[str, list[dict]] = {side: [] for side, _ in sides}
    try:
        for _, generator in sides:  # warm-up, not timed
            generator.generate(prompts[:4], SamplingParams(temperature=1.0, max_new_tokens=8), seeds=seeds[:4])
        for _ in range(args.repeats):
            for side, generator in sides:
                load = os.getloadavg()[0]
                started = time.perf_counter()
                completions = generator.generate(prompts, params, seeds=seeds)
                seconds = time.perf_counter() - started
                tokens = sum(len(c.token_ids) for c in completions)
                runs[side].append({"seconds": seconds, "generated_tokens": tokens, "load_1min": load})
                print(f"{name:30s} {side:5s} {tokens / seconds:8.0f} tokens/s (load {load:.1f})", flush=True)
        syncs = []
        for step in range(args.repeats + 1):
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.add_(1e-3)
            started = time.perf_counter()
            vllm.sync_weights(model)
            if step:  # the first sync pays one-time costs (file creation)
                syncs.append(time.perf_counter() - started)
    finally:
        stock.close()
        vllm.close()
    rate = {side: statistics.median(r["generated_tokens"] / r["seconds"] for r in rs) for side, rs in runs.items()}
    return {"model": name, "parameters": parameters, "shape": shape, "engine_startup_s": startup,
            "tokens_per_s": rate, "vllm_over_hf": rate["vllm"] / rate["hf"],
            "stock_vllm_over_hf": rate["vllm_stock"] / rate["hf"],
            "weight_sync_s": statistics.median(syncs), "weight_sync_runs": syncs,
            "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters()), "runs": runs}


def _stock_engine(model_dir: str, batch: int, max_len: int):
    """vLLM as it comes (prepacked CPU GEMMs, no agentrl extension): the same settings otherwise.
    Its weights cannot be updated (agentrl/generation/vllm_worker.py); it is here for its speed."""
    from vllm import LLM

    return LLM(model=model_dir, tokenizer=model_dir, dtype="float32", max_model_len=max_len, max_num_seqs=batch,
               enforce_eager=True, kv_cache_memory_bytes=2**30, logprobs_mode="processed_logprobs",
               max_logprobs=64, enable_chunked_prefill=False, seed=0)


def table(result: dict) -> str:
    rows = ["| model | parameters | HF tokens/s | vLLM tokens/s | vLLM / HF | stock vLLM tokens/s | stock vLLM / HF "
            "| weight sync (s) | engine start (s) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["results"]:
        rate = r["tokens_per_s"]
        rows.append(f"| {r['model']} | {r['parameters'] / 1e6:.1f}M | {rate['hf']:.0f} | {rate['vllm']:.0f} | "
                    f"{r['vllm_over_hf']:.2f}x | {rate['vllm_stock']:.0f} | {r['stock_vllm_over_hf']:.2f}x | "
                    f"{r['weight_sync_s']:.3f} | {r['engine_startup_s']:.0f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="prompts per generate call")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("docs/experiments/data/hf_vs_vllm.json"))
    args = parser.parse_args()
    import vllm

    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(name, shape, Path(tmp), args) for name, shape in MODELS.items()]
    result = {"benchmark": "generation_hf_vs_vllm", "command": "python benchmarks/generation_hf_vs_vllm.py "
              + " ".join(sys.argv[1:]), "machine": {**machine(), "cpus": os.cpu_count()},
              "vllm": vllm.__version__, "batch": args.batch, "prompt_len": args.prompt_len,
              "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "results": results}
    write_result(result, table(result), args.out)


if __name__ == "__main__":
    main()
