"""The `vllm` backend in this process, against the real engine (vLLM's CPU build).

What is compared: every sampled token's log-prob with a fresh forward of the trainer's model
(same weights, same temperature), before and after a weight sync; an engine that kept its old
weights would fail the same comparison (checked too: that is the silent failure to catch). A
short RL run with `generation.backend=vllm` syncs after each update and ends with the engine
on the trainer's weights.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch

from agentrl.config import ConfigError, VLLMGenerationConfig, load_config
from agentrl.generation import close_generator, make_generator
from agentrl.models import load_model
from agentrl.training import RLTrainer
from agentrl.training.logprobs import token_logprobs
from agentrl.types import SamplingParams
from tests.foundation.test_training import Lowercase

#: an engine or server starts in about 30 s on 2 idle cores; a loaded machine takes longer
pytestmark = pytest.mark.timeout(900)

#: float32 on both sides; vLLM's CPU attention and GEMMs sum in another order than HF's
TOLERANCE = 2e-4


def reference_logprobs(model, prompt: list[int], completion: list[int], temperature: float) -> list[float]:
    """Log-probs of `completion` after `prompt` under `model`: the trainer's own computation."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logprobs, _ = token_logprobs(model, ids, torch.ones_like(ids), temperature=temperature)
    return logprobs[0, len(prompt):].tolist()  # position t holds the log-prob of token t


def max_error(model, prompts, completions, temperature: float) -> float:
    errors = [abs(a - b)
              for prompt, c in zip(prompts, completions)
              for a, b in zip(reference_logprobs(model, prompt, c.token_ids, temperature), c.logprobs)]
    assert errors, "nothing was sampled"
    return max(errors)


@pytest.fixture(scope="module")
def policy(vllm_model_dir):
    model, tokenizer = load_model(vllm_model_dir)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def engine(policy):
    from agentrl.generation.vllm import VLLMGenerator

    model, tokenizer = policy
    generator = VLLMGenerator.from_config(VLLMGenerationConfig(kv_cache_gb=0.25), model, tokenizer,
                                          max_batch_size=16, max_model_len=256)
    yield generator
    generator.close()


@pytest.fixture(scope="module")
def prompts(policy):
    _, tokenizer = policy
    texts = ["<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n",
             "<|im_start|>user\ncompute the sum of 7 and 8<|im_end|>\n<|im_start|>assistant\n",
             "the result is"]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_tokens_carry_the_trainers_log_probs(engine, policy, prompts, temperature):
    model, _ = policy
    completions = engine.generate(prompts, SamplingParams(temperature=temperature, max_new_tokens=12),
                                  seeds=[1, 2, 3])
    assert [len(c.token_ids) for c in completions] == [len(c.logprobs) for c in completions]
    assert max_error(model, prompts, completions, temperature) < TOLERANCE
    for c in completions:
        assert c.text == engine.tokenizer.decode(c.token_ids, skip_special_tokens=False)


def test_per_row_seeds_repeat_and_differ(engine, prompts):
    params = SamplingParams(temperature=1.0, max_new_tokens=12)
    same = [prompts[0]] * 3
    first = engine.generate(same, params, seeds=[5, 6, 7])
    again = engine.generate(same, params, seeds=[5, 6, 7])
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert len({tuple(c.token_ids) for c in first}) > 1, "one prompt, three seeds, one completion"


def test_greedy_is_the_argmax_with_log_probs_at_temperature_one(engine, policy, prompts):
    model, _ = policy
    completions = engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=8))
    for prompt, completion in zip(prompts, completions):
        ids = list(prompt)
        for token in completion.token_ids:
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            assert token == int(logits.argmax())
            ids.append(token)
    assert max_error(model, prompts, completions, 1.0) < TOLERANCE


def test_stop_strings_and_length_finish_reasons(engine, prompts):
    free = engine.generate(prompts[:1], SamplingParams(temperature=1.0, max_new_tokens=40), seeds=[0])[0]
    stop = engine.tokenizer.decode(free.token_ids[2:4])  # a string the free run produced
    stopped = engine.generate(prompts[:1], SamplingParams(temperature=1.0, max_new_tokens=40, stop=(stop,)),
                              seeds=[0])[0]
    assert stopped.finish_reason == "stop" and stopped.stop_string == stop
    assert stopped.text.endswith(stop), "the stop string stays in the output"
    short = engine.generate(prompts[:1], SamplingParams(temperature=1.0, max_new_tokens=3), seeds=[0])[0]
    assert short.finish_reason == "length" and len(short.token_ids) == 3


def test_top_p_below_one_is_refused_with_the_fix(engine, prompts):
    with pytest.raises(ValueError, match="top_p=1 only .* rollout.top_p=1 or use generation.backend=hf"):
        engine.generate(prompts, SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=4))


@pytest.mark.parametrize("max_model_len, said", [(None, "rollout.max_total_tokens=1024"),
                                                   (600, "generation.max_model_len=600")])
def test_a_context_longer_than_the_models_positions_is_one_line(policy, max_model_len, said):
    model, tokenizer = policy  # max_position_embeddings=512
    settings = VLLMGenerationConfig(max_model_len=max_model_len)
    with pytest.raises(ConfigError, match=rf"^{re.escape(said)} is longer than the model's "
                                          r"max_position_embeddings=512, .* at most 512$"):
        make_generator(settings, model, tokenizer, max_batch_size=4, max_model_len=1024)


def test_a_weight_sync_puts_the_trainers_new_weights_in_the_engine(engine, policy, prompts):
    model, _ = policy
    changed = copy.deepcopy(model)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for parameter in changed.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    params = SamplingParams(temperature=1.0, max_new_tokens=12)
    try:
        stale = engine.generate(prompts, params, seeds=[1, 2, 3])
        assert max_error(changed, prompts, stale, 1.0) > 100 * TOLERANCE, "the comparison cannot tell"
        engine.sync_weights(changed)
        synced = engine.generate(prompts, params, seeds=[1, 2, 3])
        assert max_error(changed, prompts, synced, 1.0) < TOLERANCE
    finally:
        engine.sync_weights(model)  # the module's other tests sample the original weights
    assert max_error(model, prompts, engine.generate(prompts, params, seeds=[1, 2, 3]), 1.0) < TOLERANCE


def test_an_rl_run_on_vllm_keeps_the_engine_on_the_trainers_weights(tmp_path, vllm_model_dir, prompts):
    config = load_config(None, [
        f"run.out_dir={tmp_path}", "generation.backend=vllm", "generation.kv_cache_gb=0.25",
        "rollout.group_size=4", "rollout.tasks_per_iteration=2",
        "rollout.max_new_tokens=8", "rollout.max_total_tokens=256", "train.lr=1e-2", "train.warmup_steps=0",
        "train.log_trajectories=0",
    ])
    model, tokenizer = load_model(vllm_model_dir)
    before = copy.deepcopy(model)
    trainer = RLTrainer(config, tmp_path / "run", model, tokenizer, Lowercase)
    try:
        synced = 0
        for _ in range(3):
            metrics = trainer.train_iteration()
            synced += metrics["perf/weight_sync_s"] > 0
        assert synced >= 1, "no update happened, so nothing was synced"
        changed = max(float((a - b).abs().max()) for a, b in zip(model.parameters(), before.parameters()))
        assert changed > 1e-3
        completions = trainer.generator.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=12),
                                                 seeds=[1, 2, 3])
        assert max_error(model, prompts, completions, 1.0) < TOLERANCE
        assert max_error(before, prompts, completions, 1.0) > 100 * TOLERANCE
    finally:
        close_generator(trainer.generator)


@pytest.mark.parametrize("lora_sync", ["merged", "adapter"])
def test_a_lora_policy_syncs_merged_weights_or_the_adapter_alone(vllm_model_dir, prompts, lora_sync):
    """The adapter starts as a no-op (B = 0); after B changes, the engine samples the adapted
    model once synced, whether it got merged weights or the adapter through vLLM's LoRA support."""
    from agentrl.config import LoraConfig
    from agentrl.generation.vllm import VLLMGenerator
    from agentrl.models.lora import apply_lora

    model, tokenizer = load_model(vllm_model_dir)
    model = apply_lora(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"])).eval()
    settings = VLLMGenerationConfig(kv_cache_gb=0.25, lora_sync=lora_sync)
    params = SamplingParams(temperature=1.0, max_new_tokens=12)
    with VLLMGenerator.from_config(settings, model, tokenizer, max_batch_size=8, max_model_len=256) as engine:
        assert max_error(model, prompts, engine.generate(prompts, params, seeds=[1, 2, 3]), 1.0) < TOLERANCE
        with torch.no_grad():
            generator = torch.Generator().manual_seed(1)
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
        stale = engine.generate(prompts, params, seeds=[1, 2, 3])
        assert max_error(model, prompts, stale, 1.0) > 100 * TOLERANCE, "the comparison cannot tell"
        engine.sync_weights(model)
        assert max_error(model, prompts, engine.generate(prompts, params, seeds=[1, 2, 3]), 1.0) < TOLERANCE
