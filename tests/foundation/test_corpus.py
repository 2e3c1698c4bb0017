"""The tokenizer corpus of `model.path: tiny`, for envs with and without an oracle."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pydantic
import pytest

from agentrl.config import ConfigError, load_config
from agentrl.envs import TextEnv, make_info, register
from agentrl.envs.tool_env import Task, ToolEnv
from agentrl.tools import Tool, ToolResult
from agentrl.training.corpus import env_corpus
from agentrl.training.run import run_training


class Riddle(TextEnv):
    """A two-turn env without an oracle (the README calls the oracle optional)."""

    system_prompt = "Answer the riddle with <answer>word</answer>."
    stop_strings = ("</answer>",)
    max_turns = 2

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.turn = 0
        return "What has keys but opens no locks?", make_info(anchor=0)

    def step(self, action):
        self.turn += 1
        solved = "<answer>piano</answer>" in action
        feedback = "" if solved else "Not quite: think of music."
        done = solved or self.turn >= self.max_turns
        return feedback, float(solved), solved, done and not solved, make_info(anchor=self.turn, success=solved)


register("test/Riddle-v0", f"{__name__}:Riddle", "a riddle without an oracle")


class PaletteTool(Tool):
    name = "palette"
    description = "List the colours of a palette."

    class Args(pydantic.BaseModel):
        palette: str = pydantic.Field(description="The palette's name.")

    async def call(self, args: Args) -> ToolResult:
        return ToolResult("red, green")


def _tool_env_without_oracle_plans() -> ToolEnv:
    return ToolEnv(tools=[PaletteTool()], tasks=[Task("Name a colour.", "red")],
                   reward_fn=lambda task, episode: 0.0, call_format="hermes", max_turns=2)


def test_an_env_without_an_oracle_gives_its_prompts_and_feedback():
    texts = env_corpus(Riddle, range(3))
    assert len(texts) == 3
    text = texts[0]
    assert "<|im_start|>system\nAnswer the riddle with <answer>word</answer>.<|im_end|>" in text
    assert "What has keys but opens no locks?" in text
    assert "Not quite: think of music." in text


def test_a_tool_env_without_oracle_plans_gives_its_tool_specs_and_error_messages():
    from agentrl.training.corpus import has_oracle

    env = _tool_env_without_oracle_plans()
    env.reset(seed=0)
    assert not has_oracle(env)
    text = env_corpus(_tool_env_without_oracle_plans, [0])[0]
    assert "Name a colour." in text
    # Hermes calls: the chat template shows the tool specs after the system prompt.
    assert env.tool_specs and "The palette's name." in text
    # The feedback to an empty turn, as the model will read it after a turn with no call.
    blank = _tool_env_without_oracle_plans()
    blank.reset(seed=0)
    feedback = blank.step("")[0]
    assert feedback and feedback in text


def test_the_oracle_episode_is_played_when_there_is_one():
    from agentrl.envs.arithmetic import Arithmetic

    env = Arithmetic()
    env.reset(seed=5)
    answer = env.oracle_action()
    text = env_corpus(Arithmetic, [5])[0]
    assert f"<|im_start|>assistant\n{answer}<|im_end|>" in text


def _recipe(tmp_path, **sections) -> object:
    overrides = [f"run.out_dir={tmp_path}/runs", "env.id=test/Riddle-v0", "eval.tasks=2",
                 "train.iterations=0", "rollout.tasks_per_iteration=1", "rollout.group_size=2",
                 "model.tiny={vocab_size: 512, hidden_size: 32, num_layers: 1, num_heads: 2, "
                 "num_kv_heads: 1, intermediate_size: 64}"]
    overrides += [f"{key}={value}" for key, value in sections.items()]
    return load_config(None, overrides)


def test_tiny_model_without_an_oracle_trains_its_tokenizer_on_the_env_text(tmp_path):
    config = _recipe(tmp_path, **{"sft.demos": 0})
    run_training(config)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "runs" / "run" / "model_init")
    # Merges learned from the env's own text: its question is a few tokens, not one per byte.
    question = "What has keys but opens no locks?"
    assert len(tokenizer(question)["input_ids"]) < len(question) / 2


def test_demonstrations_from_an_env_without_an_oracle_are_a_config_error(tmp_path):
    config = _recipe(tmp_path, **{"sft.demos": 10})
    with pytest.raises(ConfigError, match=r"sft\.demos=10: .* no oracle_action\(\).* set sft\.demos=0"):
        run_training(config)
    assert not (tmp_path / "runs").exists()  # found before anything was written


def test_the_cli_says_so_in_one_line(tmp_path):
    module = tmp_path / "riddle_env.py"
    module.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from agentrl.envs import register
        register("test/Riddle-v0", "test_corpus:Riddle", "a riddle without an oracle")
    """))
    recipe = tmp_path / "riddle.yaml"
    recipe.write_text("env: {id: test/Riddle-v0, imports: [riddle_env]}\nsft: {demos: 10}\n"
                      f"run: {{out_dir: {tmp_path}/runs}}\n")
    result = subprocess.run([sys.executable, "-m", "agentrl.cli", "train", str(recipe)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "sft.demos=10" in lines[0] and "oracle_action()" in lines[0], result.stderr
