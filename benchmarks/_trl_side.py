"""The TRL side of benchmarks/vs_trl.py; runs inside `.venv-trl` (scripts/setup_trl.sh).

Two commands, both started by benchmarks/vs_trl.py:

    python benchmarks/_trl_side.py template MODEL_DIR
        give the saved tokenizer TRL's Qwen2.5 chat template (the one TRL ships and knows how
        to parse tool calls from), so that both sides train with the same template;

    python benchmarks/_trl_side.py run SPEC.json
        build TRL's `GRPOTrainer` on the model, tasks and settings of SPEC and train, one
        optimizer step per line "step" read from stdin; after each step print one line
        `VS_TRL {json}` with the step's seconds split into generation, tool loop and update.

Stepping on demand lets the parent interleave TRL's steps with agentrl's, so that load from
other processes hits both sides alike. The breakdown is measured by wrapping three of the
trainer's own methods on the instance (`_generate_and_score_completions`: the whole rollout and
scoring; `_generate_single_turn`: every call to `model.generate`; `_tool_call_loop`: running
tools, rendering their results and re-prompting, whose generate calls count as generation);
the update is the rest of the step.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import _vs_trl_task as task

PREFIX = "VS_TRL "


def set_template(model_dir: str) -> None:
    """Save the tokenizer of `model_dir` again with TRL's Qwen2.5 chat template."""
    from transformers import AutoTokenizer
    from trl.chat_template_utils import qwen2_5_chat_template

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = qwen2_5_chat_template
    tokenizer.save_pretrained(model_dir)


class _Clock:
    """Seconds spent in wrapped methods during the current step, and tokens they handled."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.seconds: dict[str, float] = {"rollout": 0.0, "generate": 0.0, "tool_loop": 0.0,
                                          "generate_in_tool_loop": 0.0}
        self.in_tool_loop = False
        self.prompt_tokens = 0  # tokens fed to model.generate as prompts (prefilled each turn)
        self.generated_tokens = 0
        self.generate_calls = 0

    def timed(self, key: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - started
        return wrapper

    def generate(self, method: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap `_generate_single_turn`: its seconds, prompt and generated tokens."""

        @functools.wraps(method)
        def wrapper(prompt_ids: list[list[int]], *args: Any, **kwargs: Any) -> Any:
            self.prompt_tokens += sum(len(p) for p in prompt_ids)
            self.generate_calls += 1
            started = time.perf_counter()
            completion_ids, logprobs = method(prompt_ids, *args, **kwargs)
            elapsed = time.perf_counter() - started
            self.seconds["generate"] += elapsed
            if self.in_tool_loop:  # re-prompting after tool results: generation, not tool time
                self.seconds["generate_in_tool_loop"] += elapsed
            self.generated_tokens += sum(len(c) for c in completion_ids)
            return completion_ids, logprobs
        return wrapper

    def tool_loop(self, method: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap `_tool_call_loop`: running tools, rendering their results, re-prompting."""
        timed = self.timed("tool_loop", method)

        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.in_tool_loop = True
            try:
                return timed(*args, **kwargs)
            finally:
                self.in_tool_loop = False
        return wrapper


def _last_assistant_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    texts = [m.get("content") or "" for m in completion if m.get("role") == "assistant"]
    return texts[-1] if texts else ""


def answer_reward(completions: list[Any], target: list[int], **_: Any) -> list[float]:
    """The shared reward: 1 when the last assistant message answers the target exactly."""
    return [task.answer_reward(_last_assistant_text(c), t) for c, t in zip(completions, target)]


def run(spec_path: str) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    dataset = Dataset.from_list(spec["tasks"])  # {"prompt": messages, "target": int}, in step order
    s = spec["settings"]
    args = GRPOConfig(
        output_dir=spec["output_dir"],
        use_cpu=True, bf16=False, seed=spec["seed"],
        max_steps=spec["max_steps"], logging_steps=1, report_to="none", save_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0,
        # One optimizer step per rollout batch of prompts x generations, as agentrl does.
        per_device_train_batch_size=s["prompts"] * s["generations"], gradient_accumulation_steps=1,
        num_generations=s["generations"], steps_per_generation=1, shuffle_dataset=False,
        max_completion_length=s["max_completion_length"],
        max_tool_calling_iterations=s.get("max_tool_calling_iterations"),
        temperature=s["temperature"], top_p=1.0, top_k=0,
        # The same optimizer as agentrl's: AdamW, constant learning rate, same betas and clipping.
        optim="adamw_torch", learning_rate=s["lr"], adam_beta1=s["betas"][0],
        adam_beta2=s["betas"][1], weight_decay=0.0, max_grad_norm=s["grad_clip"],
        lr_scheduler_type="constant", warmup_steps=0,
        # No KL reference model and no activation recomputation: neither does agentrl's default.
        beta=0.0, gradient_checkpointing=False,
        loss_type="dapo", scale_rewards="group",
    )
    tools = [task.add] if s.get("tools") else None
    trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=answer_reward,
                          args=args, train_dataset=dataset, tools=tools)

    clock = _Clock()
    trainer._generate_and_score_completions = clock.timed("rollout", trainer._generate_and_score_completions)
    trainer._generate_single_turn = clock.generate(trainer._generate_single_turn)
    if tools:
        trainer._tool_call_loop = clock.tool_loop(trainer._tool_call_loop)

    class Stepper(TrainerCallback):
        """Waits for the parent's go before each step; reports each step after its log line."""

        def __init__(self) -> None:
            self.started = 0.0
            self.step_s = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            line = sys.stdin.readline()
            if line.strip() != "step":
                raise SystemExit(f"expected 'step' from the parent, got {line!r}")
            clock.reset()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.step_s = time.perf_counter() - self.started

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" not in logs:
                return
            sec = clock.seconds
            generate = sec["generate"]
            # The tool loop's own time, without the generate calls made inside it.
            tool = max(0.0, sec["tool_loop"] - sec["generate_in_tool_loop"])
            record = {
                "step_s": self.step_s,
                "generate_s": generate,
                "env_s": tool,
                "rollout_other_s": max(0.0, sec["rollout"] - generate - tool),
                "update_s": max(0.0, self.step_s - sec["rollout"]),
                "prompt_tokens_processed": clock.prompt_tokens,
                "generated_tokens": clock.generated_tokens,
                "generate_calls": clock.generate_calls,
                "logs": {k: v for k, v in logs.items() if isinstance(v, (int, float))},
            }
            print(PREFIX + json.dumps(record), flush=True)

    trainer.add_callback(Stepper())
    trainer.train()
    print(PREFIX + json.dumps({"done": True}), flush=True)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "template" and len(sys.argv) == 3:
        set_template(sys.argv[2])
    elif command == "run" and len(sys.argv) == 3:
        run(sys.argv[2])
    else:
        raise SystemExit("usage: _trl_side.py template MODEL_DIR | run SPEC.json")
