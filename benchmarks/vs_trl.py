"""Seconds per GRPO step: agentrl against TRL's `GRPOTrainer`, same model, tasks and optimizer.

    make bench-trl          (builds .venv-trl with scripts/setup_trl.sh, then runs this)
    python benchmarks/vs_trl.py [--steps 4] [--warmup 1] [--workloads arithmetic,tool_sum]
        [--threads 1] [--sft-demos 800] [--out docs/experiments/data/vs_trl.json]

Both sides train one tiny Qwen2 model (agentrl.models.build_tiny_model, given TRL's Qwen2.5
chat template so TRL can parse its tool calls, then a short SFT warm-up on oracle
demonstrations, each turn ending with EOS, so that it calls the tool, answers in the expected
format and ends its turns where both sides stop), saved to one directory both load. Each workload is 16 prompts x 8 generations per step:

- `arithmetic`: single turn, "What is 3 + 5?" answered as <answer>8</answer>, 16 new tokens;
- `tool_sum`: "What is 3 + 5 + 7?" solved by calling the `add` tool twice, one call per turn,
  then answering (three turns); TRL runs the tool through `GRPOTrainer(tools=[add])`, agentrl
  through a `ToolEnv` with the same function behind an `add` tool. Up to 4 turns of 48 new
  tokens each on agentrl's side; on TRL's, up to 3 tool rounds and 256 completion tokens
  (its budget counts tool results too).

The tool, the prompts, the task seeds and the reward are the same code on both sides
(benchmarks/_vs_trl_task.py); the prompts render to the same tokens. Optimizer: AdamW at the
same constant learning rate, betas and gradient clipping; float32, no KL term, no activation
recomputation on either side. The loss is a token mean over the batch on both sides.

agentrl runs in this process with its defaults (shared-prefix update, skipping sequences
whose advantage is zero, prefix-cached multi-turn generation); TRL runs in `.venv-trl`
(benchmarks/_trl_side.py), stepped on demand so that the two sides alternate step by step
(A B, then B A, ...): load from other processes hits both alike. The first `--warmup` steps of
each side are not timed. Each side reports its step split into generation, env/tool and
update, plus the prompt tokens it fed the model while generating.

Writes JSON (default docs/experiments/data/vs_trl.json) and prints the table that
docs/scale.md section 7 keeps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared task module
import _vs_trl_task as task  # noqa: E402
from _common import machine, write_result  # noqa: E402

from agentrl.config import load_config  # noqa: E402
from agentrl.envs.arithmetic import Arithmetic  # noqa: E402
from agentrl.envs.tool_env import Episode, Task, ToolEnv  # noqa: E402
from agentrl.models import build_tiny_model, load_model  # noqa: E402
from agentrl.rollout import collect_demonstrations  # noqa: E402
from agentrl.tools import Tool, ToolResult  # noqa: E402
from agentrl.training.corpus import env_corpus  # noqa: E402
from agentrl.training.rl import RLTrainer  # noqa: E402
from agentrl.training.sft import sft_train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPTS, GENERATIONS = 16, 8
LR, BETAS, GRAD_CLIP = 1e-5, (0.9, 0.99), 1.0
TRAIN_SEEDS = 0  # task seeds of the timed steps start here; demonstrations use 1_000_000 on

#: Per workload: agentrl's rollout settings and TRL's generation budget for the same episodes.
WORKLOADS: dict[str, dict[str, Any]] = {
    "arithmetic": {"max_new_tokens": 16, "max_turns": 1, "max_completion_length": 16, "tools": False},
    "tool_sum": {"max_new_tokens": 48, "max_turns": 4, "max_completion_length": 256, "tools": True,
                 "max_tool_calling_iterations": 3},
}


# --- the envs (agentrl's side of the shared tasks) ---------------------------------------------


class AddTool(Tool):
    """agentrl's wrapper of the shared `add` function."""

    name = "add"
    description = "Add two integers."

    class Args(pydantic.BaseModel):
        a: int
        b: int

    async def call(self, args: Args) -> ToolResult:
        return ToolResult(str(task.add(args.a, args.b)))


def _sum_task(rng: np.random.Generator) -> Task:
    numbers = [int(rng.integers(0, 10)) for _ in range(3)]
    partial = numbers[0] + numbers[1]
    total = partial + numbers[2]
    plan = (("add", {"a": numbers[0], "b": numbers[1]}), ("add", {"a": partial, "b": numbers[2]}),
            ("answer", {"answer": str(total)}))
    return Task(task.sum_question(numbers), answer=total, oracle=plan)


def _sum_reward(t: Task, episode: Episode) -> float:
    return task.answer_reward(f"<answer>{episode.answer}</answer>" if episode.answered else "", t.answer)


def make_sum_env() -> ToolEnv:
    """The tool workload: hermes calls, results as user turns in <tool_response> tags.

    That is exactly how the Qwen2.5 template renders TRL's tool messages, and the tool list in
    the system turn is `transformers.utils.get_json_schema(add)`, what TRL renders for `tools=[add]`.
    """
    from transformers.utils import get_json_schema

    env = ToolEnv([AddTool()], _sum_task, _sum_reward, call_format="hermes", max_turns=4,
                  system_prompt=task.SUM_SYSTEM, observation_role="user")
    env.tool_specs = (get_json_schema(task.add),)
    return env


def make_arithmetic_env() -> Arithmetic:
    return Arithmetic(system_prompt=task.ARITHMETIC_SYSTEM)


ENVS = {"arithmetic": make_arithmetic_env, "tool_sum": make_sum_env}


def trl_tasks(workload: str, count: int) -> list[dict[str, Any]]:
    """The first `count` task seeds agentrl's trainer draws, as TRL dataset rows in that order."""
    rows = []
    env = ENVS[workload]()
    for seed in range(TRAIN_SEEDS, TRAIN_SEEDS + count):
        observation, _ = env.reset(seed=seed)
        target = env.episode.task.answer if workload == "tool_sum" else env.target
        rows.append({"prompt": [{"role": "system", "content": env.system_prompt},
                                {"role": "user", "content": observation}], "target": int(target)})
    env.close()
    return rows


# --- the shared model --------------------------------------------------------------------------


def build_model(folder: Path, trl_python: Path, sft_demos: int, threads: int) -> Path:
    """The tiny model both sides load: tokenizer on both tasks' text, TRL's Qwen2.5 chat
    template, a short SFT warm-up on oracle demonstrations of both tasks."""
    texts = [text for make_env in ENVS.values() for text in env_corpus(make_env, range(1_000_000, 1_001_000))]
    model_dir = build_tiny_model(texts, folder / "model", seed=0)
    subprocess.run([str(trl_python), str(ROOT / "benchmarks" / "_trl_side.py"), "template", str(model_dir)],
                   check=True)
    model, tokenizer = load_model(model_dir)
    demos = [d for make_env in ENVS.values()
             for d in collect_demonstrations(_ending_with_eos(make_env), range(1_000_000, 1_000_000 + sft_demos),
                                             tokenizer)]
    started = time.perf_counter()
    history = sft_train(model, tokenizer, demos, epochs=2, batch_size=32, lr=1e-3, warmup_steps=20, seed=0)
    print(f"SFT warm-up: {len(demos)} demos, {len(history)} steps, final loss "
          f"{history[-1]['sft/loss']:.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


def _ending_with_eos(make_env):
    """The env for demonstrations without its stop strings, so that every demonstrated turn ends
    with the EOS token (<|im_end|>) as a chat model's turns do. TRL's generation stops only at
    EOS; agentrl stops at the env's stop strings (one token earlier). Without this the model
    never learns to end a turn and TRL would generate to its limit: work agentrl never does."""
    def make():
        env = make_env()
        env.stop_strings = ()
        return env
    return make


# --- the two sides -----------------------------------------------------------------------------


class AgentrlSide:
    """agentrl's `RLTrainer` on the workload, one `train_iteration()` per step."""

    def __init__(self, workload: str, model_dir: Path, run_dir: Path, seed: int) -> None:
        w = WORKLOADS[workload]
        config = load_config(None, [
            f"rollout.group_size={GENERATIONS}", f"rollout.tasks_per_iteration={PROMPTS}",
            f"rollout.max_new_tokens={w['max_new_tokens']}", f"rollout.max_turns={w['max_turns']}",
            f"train.lr={LR}", f"train.betas=[{BETAS[0]}, {BETAS[1]}]", f"train.grad_clip={GRAD_CLIP}",
            "train.warmup_steps=0", "train.min_lr_ratio=1.0", "train.log_trajectories=0",
            f"env.train_seed_offset={TRAIN_SEEDS}", f"run.seed={seed}",
        ])
        model, tokenizer = load_model(model_dir)
        self.trainer = RLTrainer(config, run_dir, model, tokenizer, ENVS[workload])

    def step(self) -> dict[str, Any]:
        m = self.trainer.train_iteration()
        generate, env = m["perf/generate_s"], m["perf/env_s"]
        return {
            "step_s": m["perf/iteration_s"], "generate_s": generate, "env_s": env,
            "rollout_other_s": max(0.0, m["perf/rollout_s"] - generate - env),
            "update_s": m["perf/update_s"],
            "prompt_tokens_processed": m["perf/prompt_tokens_processed"],
            "generated_tokens": m["rollout/generated_tokens"],
            "reward_mean": m["reward/mean"], "turns_mean": m["rollout/turns_mean"],
            "skipped_sequences": m["perf/skipped_sequences"],
            "update_tokens_shared": m["perf/update_tokens_shared"],
        }

    def close(self) -> None:
        self.trainer.engine.close()
        self.trainer.logger.close()


class TrlSide:
    """TRL's `GRPOTrainer` in `.venv-trl`, one optimizer step per `step()`."""

    def __init__(self, workload: str, model_dir: Path, folder: Path, trl_python: Path, steps: int,
                 threads: int, seed: int) -> None:
        w = WORKLOADS[workload]
        spec = {
            "model": str(model_dir), "output_dir": str(folder / "trl_out"), "threads": threads,
            "seed": seed, "max_steps": steps, "tasks": trl_tasks(workload, PROMPTS * steps),
            "settings": {"prompts": PROMPTS, "generations": GENERATIONS, "lr": LR, "betas": BETAS,
                         "grad_clip": GRAD_CLIP, "temperature": 1.0, "tools": w["tools"],
                         "max_completion_length": w["max_completion_length"],
                         "max_tool_calling_iterations": w.get("max_tool_calling_iterations")},
        }
        spec_path = folder / f"trl_{workload}.json"
        spec_path.write_text(json.dumps(spec))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        self.process = subprocess.Popen(
            [str(trl_python), str(ROOT / "benchmarks" / "_trl_side.py"), "run", str(spec_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)

    def step(self) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        for line in self.process.stdout:
            if line.startswith("VS_TRL "):
                record = json.loads(line[len("VS_TRL "):])
                logs = record.pop("logs")
                record["reward_mean"] = logs.get("reward")
                record["completion_length_mean"] = logs.get("completions/mean_length")
                record["tool_calls"] = {k: v for k, v in logs.items() if k.startswith("tools/")}
                return record
        raise RuntimeError(f"the TRL side ended early (exit code {self.process.wait()}); see its stderr above")

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()


# --- timing ------------------------------------------------------------------------------------


def run_workload(workload: str, model_dir: Path, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    total = args.warmup + args.steps
    sides = {
        "agentrl": AgentrlSide(workload, model_dir, folder / f"agentrl_{workload}", args.seed),
        "trl": TrlSide(workload, model_dir, folder, args.trl_python, total, args.threads, args.seed),
    }
    records: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    try:
        for i in range(total):
            order = ["agentrl", "trl"] if i % 2 == 0 else ["trl", "agentrl"]
            for name in order:
                load = os.getloadavg()[0]
                record = sides[name].step()
                record["load_1min"] = load
                record["warmup"] = i < args.warmup
                records[name].append(record)
                print(f"{workload} step {i + 1}/{total} {name:8s} {record['step_s']:7.2f} s "
                      f"(gen {record['generate_s']:.2f}, env {record['env_s']:.2f}, "
                      f"update {record['update_s']:.2f}) reward {record['reward_mean']:.2f} "
                      f"load {load:.1f}", flush=True)
    finally:
        for side in sides.values():
            side.close()
    summary = {name: _medians([r for r in rs if not r["warmup"]]) for name, rs in records.items()}
    summary["trl_over_agentrl"] = summary["trl"]["step_s"] / summary["agentrl"]["step_s"]
    return {"settings": WORKLOADS[workload], "steps": records, "median": summary}


def _medians(records: list[dict[str, Any]]) -> dict[str, float]:
    keys = ["step_s", "generate_s", "env_s", "rollout_other_s", "update_s",
            "prompt_tokens_processed", "generated_tokens", "reward_mean", "load_1min"]
    return {k: statistics.median(float(r[k]) for r in records) for k in keys}


def table(result: dict[str, Any]) -> str:
    rows = ["| workload | side | s/step | generation | env/tool | rest of rollout | update "
            "| prompt tokens prefilled | generated tokens | reward | TRL / agentrl |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for workload, w in result["workloads"].items():
        for name in ("agentrl", "trl"):
            m = w["median"][name]
            ratio = f"{w['median']['trl_over_agentrl']:.2f}x" if name == "trl" else ""
            rows.append(f"| {workload} | {name} | {m['step_s']:.2f} | {m['generate_s']:.2f} | "
                        f"{m['env_s']:.2f} | {m['rollout_other_s']:.2f} | {m['update_s']:.2f} | "
                        f"{m['prompt_tokens_processed']:.0f} | {m['generated_tokens']:.0f} | "
                        f"{m['reward_mean']:.2f} | {ratio} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per side and workload")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--workloads", default="arithmetic,tool_sum")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on each side")
    parser.add_argument("--sft-demos", type=int, default=800, help="oracle demonstrations per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trl-python", type=Path, default=ROOT / ".venv-trl" / "bin" / "python")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "experiments" / "data" / "vs_trl.json")
    args = parser.parse_args()
    if not args.trl_python.exists():
        raise SystemExit(f"no TRL environment at {args.trl_python}: run `bash scripts/setup_trl.sh` first "
                         "(or `make bench-trl`)")
    unknown = set(args.workloads.split(",")) - set(WORKLOADS)
    if unknown:
        raise SystemExit(f"unknown workload(s) {sorted(unknown)}; choose from {sorted(WORKLOADS)}")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.work_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        model_dir = build_model(folder, args.trl_python, args.sft_demos, args.threads)
        trl_versions = subprocess.run(
            [str(args.trl_python), "-c", "import trl, transformers, torch; "
             "print(trl.__version__, transformers.__version__, torch.__version__)"],
            check=True, capture_output=True, text=True).stdout.split()
        result: dict[str, Any] = {
            "command": "python benchmarks/vs_trl.py " + " ".join(sys.argv[1:]),
            "machine": {**machine(), "cpus": os.cpu_count()},
            "trl_env": dict(zip(["trl", "transformers", "torch"], trl_versions)),
            "prompts": PROMPTS, "generations": GENERATIONS, "lr": LR, "betas": BETAS,
            "warmup_steps": args.warmup, "timed_steps": args.steps, "workloads": {},
        }
        for workload in args.workloads.split(","):
            result["workloads"][workload] = run_workload(workload, model_dir, folder, args)
    write_result(result, table(result), args.out)


if __name__ == "__main__":
    main()
