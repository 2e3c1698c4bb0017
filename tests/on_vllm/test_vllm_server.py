"""`vllm serve` as agentrl's `openai` backend, against a real server process on loopback.

The server is started the way docs/scale.md tells users to (`agentrl.generation.vllm_server`).
Compared: the token ids and log-probs it returns with a fresh forward of the trainer's model,
before and after an RL run that pushes its weights to the server after each update; evaluation
through it; a served model whose tokenizer differs from the trainer's, refused in one line before
the first rollout (a server that cannot take weights: tests/scale/test_generation_backends.py).
"""

from __future__ import annotations

import copy
import json

import pytest

from agentrl.config import load_config
from agentrl.generation import OpenAIGenerator, TokenizerMismatch, close_generator
from agentrl.models import build_tiny_model, load_model
from agentrl.training import RLTrainer
from agentrl.training.run import run_eval_only
from agentrl.types import SamplingParams
from tests.foundation.test_training import Lowercase

from .conftest import free_port
from .test_vllm_engine import TOLERANCE, max_error

#: an engine or server starts in about 30 s on 2 idle cores; a loaded machine takes longer
pytestmark = pytest.mark.timeout(900)

SERVED = "policy"


@pytest.fixture(scope="module")
def server(vllm_model_dir):
    from agentrl.generation.vllm_server import VLLMServer

    with VLLMServer(vllm_model_dir, served_model_name=SERVED, port=free_port(), max_model_len=256,
                    kv_cache_gb=0.25) as running:
        yield running


@pytest.fixture(scope="module")
def prompts(vllm_model_dir):
    _, tokenizer = load_model(vllm_model_dir)
    texts = ["<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n", "the result is"]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def _overrides(tmp_path, server, *extra: str) -> list[str]:
    return [f"run.out_dir={tmp_path}", "generation.backend=openai", f"generation.base_url={server.base_url}",
            f"generation.model={SERVED}", "rollout.max_new_tokens=8",
            "rollout.max_total_tokens=256", *extra]


def test_the_server_samples_with_the_trainers_log_probs(server, vllm_model_dir, prompts):
    model, tokenizer = load_model(vllm_model_dir)
    with OpenAIGenerator(server.base_url, SERVED) as generator:
        generator.check_server(tokenizer)
        for temperature in (1.0, 0.7):
            completions = generator.generate(prompts, SamplingParams(temperature=temperature, max_new_tokens=12),
                                             seeds=[1, 2])
            assert max_error(model, prompts, completions, temperature) < TOLERANCE


def test_a_served_model_with_another_tokenizer_is_refused_before_any_rollout(server, tmp_path):
    other_dir = build_tiny_model([f"another corpus {i} with other words, {i * 7}" for i in range(300)],
                                 tmp_path / "other", vocab_size=280, hidden_size=32, num_layers=1, seed=3)
    _, other_tokenizer = load_model(other_dir)
    with OpenAIGenerator(server.base_url, SERVED) as generator:
        with pytest.raises(TokenizerMismatch, match="tokenizes text differently .* Serve the same checkpoint"):
            generator.check_server(other_tokenizer)


def test_evaluation_through_the_server_writes_the_report(server, tmp_path, vllm_model_dir):
    config = load_config(None, _overrides(tmp_path, server, "eval.tasks=4", "eval.samples=2", "eval.pass_k=[1,2]"))
    metrics, report = run_eval_only(config, tokenizer_path=vllm_model_dir, report=tmp_path / "held_out.json")
    saved = json.loads(report.read_text())
    assert 0.0 <= metrics["pass@2"] <= 1.0 and metrics["pass@1"] <= metrics["pass@2"]
    assert saved["metrics"]["pass@2"] == metrics["pass@2"]


def test_training_pushes_each_update_to_the_server(server, tmp_path, vllm_model_dir, prompts):
    """Last in this module: it leaves the server on the trained weights."""
    config = load_config(None, _overrides(tmp_path, server, "generation.weight_sync=vllm", "rollout.group_size=4",
                                          "rollout.tasks_per_iteration=2", "train.lr=1e-2", "train.warmup_steps=0",
                                          "train.log_trajectories=0"))
    model, tokenizer = load_model(vllm_model_dir)
    before = copy.deepcopy(model)
    trainer = RLTrainer(config, tmp_path / "run", model, tokenizer, Lowercase)
    try:
        synced = sum(trainer.train_iteration()["perf/weight_sync_s"] > 0 for _ in range(3))
        assert synced >= 1, "no update happened, so nothing was synced"
        completions = trainer.generator.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=12),
                                                 seeds=[1, 2])
        assert max_error(model, prompts, completions, 1.0) < TOLERANCE
        assert max_error(before, prompts, completions, 1.0) > 100 * TOLERANCE
    finally:
        close_generator(trainer.generator)

