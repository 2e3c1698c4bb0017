"""One RL update with LoRA adapters against the same update of every weight, on the demo's model.

All arms run `RLTrainer._update(trajectories, advantages)` on one rollout batch of the demo
recipe (the default `Config()`: tiny Qwen2, hidden 256, 4 layers, vocab 512, on
`agentrl/ArithmeticTryAgain-v0`), each with its own copy of the policy and its own optimizer:

- full: every weight trains (no `model.lora`);
- lora-attention: `model.lora: {r: 8, alpha: 16}` on q/k/v/o_proj (the default targets);
- lora-all-linear: the same rank on every linear layer but the output head.

The policy is built as `benchmarks/rl_update_overhead.py` builds it (a short SFT warm-up, then one
rollout batch; advantages of random 0/1 rewards). The arms run interleaved (A B C A B C ...) after
a warm-up, so load from other processes hits them alike; the table shows medians. Also recorded
per arm: the parameters that train and their share, AdamW's state bytes, and the bytes of the
model part of a checkpoint (full weights, or the adapter alone).

    python benchmarks/lora_update.py [--repeats 5] [--threads 1] [--out runs/bench/lora_update.json]
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import machine, write_result
from rich.console import Console
from rl_update_overhead import build_policy, random_advantages, rollout_batch

from agentrl.config import Config, LoraConfig
from agentrl.models.lora import apply_lora, trainable_parameters
from agentrl.training.rl import RLTrainer
from agentrl.training.run import env_factory

ARMS: dict[str, LoraConfig | None] = {
    "full": None,
    "lora-attention": LoraConfig(r=8, alpha=16.0),
    "lora-all-linear": LoraConfig(r=8, alpha=16.0, target_modules="all-linear"),
}


def _bytes(directory: Path, suffix: str = ".safetensors") -> int:
    return sum(p.stat().st_size for p in directory.rglob(f"*{suffix}"))


def run_benchmark(*, repeats: int, warmup: int, sft_demos: int, threads: int, console: Console) -> dict[str, Any]:
    torch.set_num_threads(threads)
    config = Config()
    torch.manual_seed(config.run.seed)
    random.seed(config.run.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with console.status("Building the tiny model and warming it up with SFT"):
            model, tokenizer = build_policy(config, work, sft_demos=sft_demos, sft_epochs=1, console=console)
        with console.status("Sampling one rollout batch"):
            trajs = rollout_batch(config, model, tokenizer)
        advantages = random_advantages(trajs, config.run.seed)

        trainers: dict[str, RLTrainer] = {}
        arms: dict[str, dict[str, Any]] = {}
        for name, settings in ARMS.items():
            policy = copy.deepcopy(model)
            if settings is not None:
                policy = apply_lora(policy, settings)
            trainable, total = trainable_parameters(policy)
            trainers[name] = RLTrainer(config, work / name, policy, tokenizer, env_factory(config))
            policy.save_pretrained(work / "saved" / name)
            arms[name] = {"lora": None if settings is None else settings.model_dump(),
                          "trainable_parameters": trainable, "parameters": total,
                          "trainable_share": trainable / total,
                          "checkpoint_model_bytes": _bytes(work / "saved" / name)}
        try:
            for _ in range(warmup):
                for trainer in trainers.values():
                    trainer._update(trajs, advantages)
            times: dict[str, list[float]] = {name: [] for name in trainers}
            load_before = os.getloadavg()  # other processes' load (it hits every arm alike)
            with console.status(f"Timing {repeats} interleaved updates per arm"):
                for _ in range(repeats):
                    for name, trainer in trainers.items():
                        started = time.perf_counter()
                        trainer._update(trajs, advantages)
                        times[name].append(time.perf_counter() - started)
            load_after = os.getloadavg()
            for name, trainer in trainers.items():
                state = trainer.optimizer.state.values()
                arms[name]["optimizer_state_bytes"] = sum(
                    t.numel() * t.element_size() for s in state for t in s.values() if torch.is_tensor(t))
                arms[name]["update_s"] = times[name]
                arms[name]["update_s_median"] = statistics.median(times[name])
        finally:
            for trainer in trainers.values():
                trainer.engine.close()
                trainer.logger.close()
    return {"benchmark": "lora_update", "recipe": "Config() defaults (demo)", "env": config.env.id,
            "trajectories": len(trajs), "tokens": sum(len(t.token_ids) for t in trajs),
            "repeats": repeats, "warmup": warmup, "sft_demos": sft_demos, "machine": machine(),
            "load_average_1_5_15": {"before": list(load_before), "after": list(load_after)}, "arms": arms}


def results_table(result: dict[str, Any]) -> str:
    full = result["arms"]["full"]["update_s_median"]
    lines = ["| arm | trainable parameters | share | AdamW state | checkpoint model part | update (median) | vs full |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, arm in result["arms"].items():
        lines.append(f"| {name} | {arm['trainable_parameters']:,} | {100 * arm['trainable_share']:.2f}% "
                     f"| {arm['optimizer_state_bytes'] / 1e6:.2f} MB | {arm['checkpoint_model_bytes'] / 1e6:.2f} MB "
                     f"| {arm['update_s_median']:.2f} s | {arm['update_s_median'] / full:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--sft-demos", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/lora_update.json"))
    args = parser.parse_args()
    result = run_benchmark(repeats=args.repeats, warmup=args.warmup, sft_demos=args.sft_demos,
                           threads=args.threads, console=Console())
    write_result(result, results_table(result), args.out)


if __name__ == "__main__":
    main()
