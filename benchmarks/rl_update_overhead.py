"""Framework overhead of one RL update: `RLTrainer._update` against a bare PyTorch loop.

Both sides do the same work on the same rollout batch of the demo recipe (the default `Config()`:
tiny Qwen2 model, hidden 256, 4 layers, vocab 512; `tasks_per_iteration x group_size`
trajectories of `agentrl/ArithmeticTryAgain-v0`):

- framework: `RLTrainer._update(trajectories, advantages)`, i.e. shuffling, length-sorted
  micro-batches, `collate`, `token_logprobs`, `agentrl.algorithms.policy_loss` and its metrics,
  gradient accumulation, `clip_grad_norm_`, AdamW, LR schedule;
- bare: a plain loop over the same padded micro-batches (built once, before timing) with the loss
  written inline (log-softmax gathered at the targets, ratio, clipped surrogate, token-mean over
  the whole batch), `clip_grad_norm_` and AdamW with the same hyper-parameters (no LR
  schedule: stepping it costs microseconds).

The first (warm-up) update of each side starts from the same weights, so their gradient norms
must agree; the JSON records both as a check that the two sides compute the same update.

Realistic trajectories: the tiny model is built on the env's own text and warmed up with a short
SFT on oracle demonstrations (as the demo does, only shorter), then one rollout batch is sampled
with `RolloutEngine` + `HFGenerator` at the recipe's sampling settings. Advantages are GRPO
advantages of random 0/1 rewards (their values do not change the cost of an update).

The two sides run interleaved (A B A B ...) after a warm-up of each, so a burst of load from
other processes hits both alike; the table shows medians. Each side owns its own copy of the
model and its own optimizer state.

    python benchmarks/rl_update_overhead.py [--repeats 5] [--threads 1] [--profile]
        [--autocast bfloat16] [--out runs/bench/rl_update_overhead.json]

`--autocast bfloat16` times both sides in bfloat16 mixed precision (`model.autocast`, as the
demos run where the CPU has native bfloat16): the framework through its config, the bare loop
under its own `torch.autocast`.

Writes a JSON result and prints a table (docs/benchmarks.md keeps the latest one). `--profile`
adds a torch-profiler run of one update of each side: the framework's time per named part
(collate, token_logprobs, entropy, policy_loss) and the ops whose self time differs most.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from agentrl.algorithms import broadcast_to_tokens, grpo_advantages
from agentrl.config import Config
from agentrl.generation import HFGenerator
from agentrl.models import build_tiny_model, load_model, resolve_autocast
from agentrl.rollout import RolloutEngine, collect_demonstrations, make_strategy
from agentrl.training.batch import TokenBatch, collate, micro_batches
from agentrl.training.corpus import env_corpus
from agentrl.training.rl import RLTrainer
from agentrl.training.run import env_factory
from agentrl.training.sft import sft_train
from agentrl.types import SamplingParams, Trajectory

#: The overhead the framework is allowed over the bare loop.
GOAL_OVERHEAD = 0.20


# --- data --------------------------------------------------------------------------------------


def build_policy(config: Config, work_dir: Path, *, sft_demos: int, sft_epochs: int,
                 console: Console) -> tuple[torch.nn.Module, Any]:
    """The demo's tiny model, built on the env's text, after a short SFT warm-up."""
    make_env = env_factory(config)
    tiny, offset = config.model.tiny, config.sft.seed_offset
    texts = env_corpus(make_env, range(offset, offset + 2000))
    model_dir = build_tiny_model(texts, work_dir / "tiny", vocab_size=tiny.vocab_size,
                                 hidden_size=tiny.hidden_size, num_layers=tiny.num_layers,
                                 num_heads=tiny.num_heads, num_kv_heads=tiny.num_kv_heads,
                                 intermediate_size=tiny.intermediate_size, seed=config.run.seed)
    model, tokenizer = load_model(model_dir)
    if sft_demos > 0:
        started = time.perf_counter()
        demos = collect_demonstrations(make_env, range(offset, offset + sft_demos), tokenizer,
                                       max_total_tokens=config.rollout.max_total_tokens)
        history = sft_train(model, tokenizer, demos, epochs=sft_epochs,
                            batch_size=config.sft.batch_size, lr=config.sft.lr,
                            warmup_steps=config.sft.warmup_steps, seed=config.run.seed)
        console.print(f"SFT warm-up: {sft_demos} demos x {sft_epochs} epochs, {len(history)} steps, "
                      f"final loss {history[-1]['sft/loss']:.3f} "
                      f"({time.perf_counter() - started:.0f} s)")
    return model, tokenizer


def rollout_batch(config: Config, model: torch.nn.Module, tokenizer: Any) -> list[Trajectory]:
    """One iteration's rollout batch, sampled exactly as the trainer samples it."""
    rcfg = config.rollout
    generator = HFGenerator(model, tokenizer, max_batch_size=rcfg.max_batch_size)
    sampling = SamplingParams(temperature=rcfg.temperature, top_p=rcfg.top_p,
                              max_new_tokens=rcfg.max_new_tokens, seed=config.run.seed)
    tasks = [{"seed": config.env.train_seed_offset + i} for i in range(rcfg.tasks_per_iteration)]
    with RolloutEngine(generator, tokenizer, sampling, max_turns=rcfg.max_turns,
                       max_total_tokens=rcfg.max_total_tokens,
                       env_workers=rcfg.env_workers) as engine:
        groups = engine.run(env_factory(config), tasks,
                            make_strategy(rcfg.strategy, group_size=rcfg.group_size))
    return [t for g in groups for t in g.trajectories]


def random_advantages(trajs: list[Trajectory], seed: int) -> list[np.ndarray]:
    """GRPO advantages of random 0/1 rewards, broadcast onto each trajectory's action tokens."""
    rng = np.random.default_rng(seed)
    rewards = rng.integers(0, 2, size=len(trajs)).astype(float)
    per_traj = grpo_advantages(rewards, [t.group_id for t in trajs])
    return [broadcast_to_tokens(float(a), [s.action_span for s in t.steps], len(t.token_ids))
            for a, t in zip(per_traj, trajs)]


# --- the two updates ---------------------------------------------------------------------------


class BareUpdate:
    """The same update as `RLTrainer._update` for the default recipe, in plain PyTorch.

    Tensors are padded once up front; each call is micro-batched forward/backward, gradient
    clipping and one AdamW step (with `foreach=True`, as agentrl's optimizer, so that both sides
    run the same optimizer kernels).
    """

    def __init__(self, model: torch.nn.Module, batches: list[TokenBatch], config: Config,
                 autocast_dtype: torch.dtype | None = None) -> None:
        tcfg = config.train
        self.model = model
        self.autocast_dtype = autocast_dtype
        self.batches = batches
        self.clip_low, self.clip_high = config.algorithm.clip_low, config.algorithm.clip_high
        self.grad_clip = tcfg.grad_clip
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, betas=tuple(tcfg.betas),
                                           weight_decay=tcfg.weight_decay, foreach=True)
        # Token-mean over the whole rollout batch: every action token weighs the same.
        self.total_tokens = sum(float(b.loss_mask.sum()) for b in batches)

    def __call__(self) -> float:
        """One update; returns the gradient norm before clipping."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        for b in self.batches:
            with torch.autocast("cpu", dtype=self.autocast_dtype or torch.bfloat16,
                                enabled=self.autocast_dtype is not None):
                logits = self.model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            logp = logp.gather(-1, b.input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            mask, adv = b.loss_mask[:, 1:], b.advantages[:, 1:]
            ratio = torch.exp((logp - b.old_logprobs[:, 1:]) * mask)
            surrogate = torch.maximum(-adv * ratio,
                                      -adv * ratio.clamp(1 - self.clip_low, 1 + self.clip_high))
            loss = (surrogate * mask).sum() / self.total_tokens
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.model.eval()
        return float(grad_norm)


def padded_micro_batches(trajs: list[Trajectory], advantages: list[np.ndarray], size: int,
                         pad_id: int) -> list[TokenBatch]:
    """The trainer's micro-batches (length-sorted chunks of `size`), padded once."""
    lengths = [len(t.token_ids) for t in trajs]
    return [collate([trajs[i] for i in chunk], [advantages[i] for i in chunk], pad_id)
            for chunk in micro_batches(range(len(trajs)), lengths, size)]


# --- timing ------------------------------------------------------------------------------------


def time_interleaved(framework: Callable[[], float], bare: Callable[[], float], *, repeats: int,
                     warmup: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds per call of each side, run A B A B ... after `warmup` untimed calls of each.

    Also returns the gradient norms of the first warm-up call of each side (same weights).
    """
    first_norms = {"framework": framework(), "bare": bare()}
    for _ in range(warmup - 1):
        framework()
        bare()
    times: dict[str, list[float]] = {"framework": [], "bare": []}
    for _ in range(repeats):
        for name, call in (("framework", framework), ("bare", bare)):
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return times, first_norms


def profile_call(call, *, framework: bool) -> dict[str, Any]:
    """Run `call` once under the torch profiler; self seconds per op, and for the framework
    update also inclusive seconds of its named parts.

    The parts are measured by wrapping the functions `RLTrainer._update` calls (looked up in
    the modules that call them), so the breakdown follows the code without editing it.
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    import agentrl.training.logprobs as logprobs_module
    import agentrl.training.rl as rl_module

    targets = [(rl_module, name) for name in ("collate", "token_logprobs", "policy_loss",
                                              "aggregate")]
    targets.append((logprobs_module, "entropy_from_logits"))
    originals = [(module, name, getattr(module, name)) for module, name in targets]

    def wrap(name, fn):
        def wrapped(*args, **kwargs):
            with record_function(f"agentrl::{name}"):
                return fn(*args, **kwargs)
        return wrapped

    try:
        if framework:
            for module, name, fn in originals:
                setattr(module, name, wrap(name, fn))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            call()
    finally:
        for module, name, fn in originals:
            setattr(module, name, fn)
    events = prof.key_averages()
    return {
        "regions_s": {e.key.split("::", 1)[1]: e.cpu_time_total / 1e6
                      for e in events if e.key.startswith("agentrl::")},
        "ops_self_s": {e.key: e.self_cpu_time_total / 1e6
                       for e in events if not e.key.startswith("agentrl::")},
    }


def profile_both(framework, bare, *, top: int = 10) -> dict[str, Any]:
    """Profiles of one update of each side, and the ops where the framework spends most extra."""
    fw = profile_call(framework, framework=True)
    base = profile_call(bare, framework=False)
    keys = set(fw["ops_self_s"]) | set(base["ops_self_s"])
    extra = {k: fw["ops_self_s"].get(k, 0.0) - base["ops_self_s"].get(k, 0.0) for k in keys}
    return {
        "framework_total_s": sum(fw["ops_self_s"].values()),
        "bare_total_s": sum(base["ops_self_s"].values()),
        "framework_regions_s": fw["regions_s"],
        "framework_top_ops_s": dict(sorted(fw["ops_self_s"].items(), key=lambda kv: -kv[1])[:top]),
        "bare_top_ops_s": dict(sorted(base["ops_self_s"].items(), key=lambda kv: -kv[1])[:top]),
        "extra_ops_s": dict(sorted(extra.items(), key=lambda kv: -abs(kv[1]))[:top]),
    }


# --- main --------------------------------------------------------------------------------------


def run_benchmark(*, repeats: int, warmup: int, sft_demos: int, sft_epochs: int, threads: int,
                  profile: bool, console: Console, autocast: str = "none") -> dict[str, Any]:
    torch.set_num_threads(threads)
    # The bare loop forwards every sequence whole, so the framework does too (no shared prefix).
    config = Config.model_validate({"model": {"autocast": autocast}, "train": {"shared_prefix": False}})
    autocast_dtype = resolve_autocast(autocast, "cpu")
    torch.manual_seed(config.run.seed)
    random.seed(config.run.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with console.status("Building the tiny model and warming it up with SFT"):
            model, tokenizer = build_policy(config, work, sft_demos=sft_demos,
                                            sft_epochs=sft_epochs, console=console)
        with console.status("Sampling one rollout batch"):
            started = time.perf_counter()
            trajs = rollout_batch(config, model, tokenizer)
            rollout_s = time.perf_counter() - started
        advantages = random_advantages(trajs, config.run.seed)
        lengths = [len(t.token_ids) for t in trajs]
        batches = padded_micro_batches(trajs, advantages, config.train.micro_batch_size,
                                       tokenizer.pad_token_id)
        data = {
            "trajectories": len(trajs),
            "sequence_length_mean": float(np.mean(lengths)),
            "sequence_length_max": max(lengths),
            "action_tokens_mean": float(np.mean([t.num_action_tokens for t in trajs])),
            "turns_mean": float(np.mean([t.num_turns for t in trajs])),
            "success_rate": float(np.mean([t.success for t in trajs])),
            "tokens": sum(lengths),
            "padded_tokens": sum(b.input_ids.numel() for b in batches),
            "micro_batches": [list(b.input_ids.shape) for b in batches],
            "rollout_s": rollout_s,
        }
        console.print(
            f"Rollout batch: {data['trajectories']} trajectories, mean length "
            f"{data['sequence_length_mean']:.1f} tokens (max {data['sequence_length_max']}), "
            f"{data['action_tokens_mean']:.1f} action tokens, {data['turns_mean']:.2f} turns, "
            f"success {data['success_rate']:.2f}; micro-batches {data['micro_batches']}")

        # Each side gets its own copy of the policy and its own optimizer state.
        bare = BareUpdate(copy.deepcopy(model), batches, config, autocast_dtype)
        trainer = RLTrainer(config, work / "run", model, tokenizer, env_factory(config))
        try:
            def framework() -> float:
                return trainer._update(trajs, advantages)["policy/grad_norm"]

            with console.status(f"Timing {warmup} warm-up + {repeats} interleaved updates per side"):
                times, first_norms = time_interleaved(framework, bare, repeats=repeats,
                                                      warmup=warmup)
            profiled = None
            if profile:
                with console.status("Profiling one update of each side"):
                    profiled = profile_both(framework, bare)
        finally:
            trainer.engine.close()
            trainer.logger.close()

    framework_s = statistics.median(times["framework"])
    bare_s = statistics.median(times["bare"])
    # Ratio per interleaved pair too: neighbours in time see similar load from other processes.
    pair_ratios = [f / b for f, b in zip(times["framework"], times["bare"])]
    result = {
        "benchmark": "rl_update_overhead",
        "recipe": "Config() defaults (demo)",
        "autocast": autocast,
        "env": config.env.id,
        "model": {"architecture": "Qwen2", "parameters": sum(p.numel() for p in model.parameters()),
                  "hidden_size": model.config.hidden_size,
                  "num_layers": model.config.num_hidden_layers,
                  "vocab_size": model.config.vocab_size},
        "config": {section: getattr(config, section).model_dump(mode="json")
                   for section in ("rollout", "algorithm", "train")},
        "sft": {"demos": sft_demos, "epochs": sft_epochs},
        "data": data,
        "repeats": repeats,
        "warmup": warmup,
        "seconds": times,
        "first_update_grad_norm": first_norms,
        "framework_median_s": framework_s,
        "bare_median_s": bare_s,
        "ratio": framework_s / bare_s,
        "pair_ratio_median": statistics.median(pair_ratios),
        "overhead": framework_s / bare_s - 1.0,
        "goal_overhead": GOAL_OVERHEAD,
        "framework_tokens_per_s": data["tokens"] / framework_s,
        "bare_tokens_per_s": data["tokens"] / bare_s,
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                    "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
    }
    if profiled is not None:
        result["profile"] = profiled
    return result


def results_table(result: dict[str, Any]) -> Table:
    table = Table(title=f"One RL update of the demo batch ({result['data']['trajectories']} "
                        f"trajectories, {result['data']['tokens']} tokens)")
    table.add_column("update")
    table.add_column("median s", justify="right")
    table.add_column("min s", justify="right")
    table.add_column("tokens/s", justify="right")
    table.add_column("vs bare", justify="right")
    for name, label in (("bare", "bare PyTorch loop"), ("framework", "RLTrainer._update")):
        median = result[f"{name}_median_s"]
        table.add_row(label, f"{median:.3f}", f"{min(result['seconds'][name]):.3f}",
                      f"{result['data']['tokens'] / median:,.0f}",
                      f"{median / result['bare_median_s']:.3f}x")
    return table


def print_profile(prof: dict[str, Any], console: Console) -> None:
    console.print(f"Profiled op time: framework {prof['framework_total_s']:.2f} s, "
                  f"bare {prof['bare_total_s']:.2f} s")
    console.print("Framework parts (inclusive s): " + ", ".join(
        f"{k} {v:.3f}" for k, v in sorted(prof["framework_regions_s"].items(), key=lambda kv: -kv[1])))
    table = Table(title="Ops with the largest self-time difference (framework - bare)")
    table.add_column("op")
    table.add_column("framework - bare s", justify="right")
    for name, seconds in prof["extra_ops_s"].items():
        table.add_row(name, f"{seconds:+.3f}")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed updates per side")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed updates per side first (at least 1)")
    parser.add_argument("--sft-demos", type=int, default=512,
                        help="oracle demonstrations for the warm-up (0: roll out the random model)")
    parser.add_argument("--sft-epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is steadiest when other processes share the cores)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one update of each side with the torch profiler")
    parser.add_argument("--autocast", choices=("none", "bfloat16"), default="none",
                        help="mixed precision of both sides (model.autocast)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/rl_update_overhead.json"))
    args = parser.parse_args()
    if args.warmup < 1 or args.repeats < 1:
        parser.error("--warmup and --repeats must be at least 1")
    console = Console()
    result = run_benchmark(repeats=args.repeats, warmup=args.warmup, sft_demos=args.sft_demos,
                           sft_epochs=args.sft_epochs, threads=args.threads, profile=args.profile,
                           console=console, autocast=args.autocast)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    console.print(results_table(result))
    norms = result["first_update_grad_norm"]
    console.print(f"Gradient norm of the first update from the same weights: framework "
                  f"{norms['framework']:.6f}, bare {norms['bare']:.6f}")
    verdict = "within" if result["overhead"] <= GOAL_OVERHEAD else "ABOVE"
    console.print(f"Framework overhead {100 * result['overhead']:+.1f}% (median of interleaved "
                  f"pairs {100 * (result['pair_ratio_median'] - 1):+.1f}%), {verdict} the "
                  f"{100 * GOAL_OVERHEAD:.0f}% goal.")
    if "profile" in result:
        print_profile(result["profile"], console)
    console.print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
