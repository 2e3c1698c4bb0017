"""Mixed precision (model.autocast): sampling and updates in bfloat16, weights kept in float32."""

from __future__ import annotations

import pytest
import torch

from agentrl.config import ConfigError, load_config
from agentrl.generation import HFGenerator
from agentrl.models import autocast, bf16_is_fast, load_model, resolve_autocast
from agentrl.training import RLTrainer, sft_train
from agentrl.training.logprobs import token_logprobs
from agentrl.types import SamplingParams

from .test_training import Lowercase, _config


def test_settings_resolve_to_a_dtype():
    assert resolve_autocast("none", "cpu") is None
    assert resolve_autocast("bfloat16", "cpu") is torch.bfloat16
    assert resolve_autocast("auto", "cpu") is (torch.bfloat16 if bf16_is_fast("cpu") else None)
    with pytest.raises(ValueError, match="'none', 'bfloat16' or 'auto'"):
        resolve_autocast("fp8", "cpu")


def test_config_names_a_bad_setting():
    assert load_config(None, ["model.autocast=bfloat16"]).model.autocast == "bfloat16"
    with pytest.raises(ConfigError, match="model.autocast"):
        load_config(None, ["model.autocast=fp8"])


def _sample(model, tok, dtype):
    prompts = [tok.encode(t, add_special_tokens=False) for t in ("What is 12 + 30?", "the result is")]
    gen = HFGenerator(model, tok, max_batch_size=2, autocast=dtype)
    completions = gen.generate(prompts, SamplingParams(max_new_tokens=12, seed=5))
    return prompts, completions


def _recomputed(model, prompt, completion, dtype):
    ids = torch.tensor([prompt + completion.token_ids])
    with torch.no_grad(), autocast("cpu", dtype):
        logprobs, _ = token_logprobs(model, ids, torch.ones_like(ids))
    return logprobs[0, len(prompt):]


def test_bf16_behaviour_logprobs_match_a_bf16_forward_up_to_rounding(tiny_model_dir):
    model, tok = load_model(tiny_model_dir)
    prompts, completions = _sample(model, tok, torch.bfloat16)
    gaps_bf16, gaps_fp32 = [], []
    for prompt, c in zip(prompts, completions):
        behaviour = torch.tensor(c.logprobs)
        gaps_bf16.append((behaviour - _recomputed(model, prompt, c, torch.bfloat16)).abs().max())
        gaps_fp32.append((behaviour - _recomputed(model, prompt, c, None)).abs().max())
    # Rounding only: what the update recomputes under the same autocast is close ...
    assert max(gaps_bf16) < 0.1
    # ... and sampling really ran in bfloat16 (a float32 pass gives other log-probs).
    assert max(gaps_fp32) > 1e-4
    assert next(model.parameters()).dtype == torch.float32


def test_bf16_rl_update_stays_on_policy_and_keeps_float32_weights(tmp_path, tiny_model_dir):
    torch.manual_seed(0)
    config = _config(tmp_path, "bf16", **{"train.iterations": 1, "train.lr": 1e-3,
                                          "model.autocast": "bfloat16"})
    model, tokenizer = load_model(tiny_model_dir)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    trainer = RLTrainer(config, tmp_path / "bf16", model, tokenizer, Lowercase)
    assert trainer.autocast is torch.bfloat16
    metrics = trainer.train_iteration()
    # One on-policy step: importance ratios differ from 1 by bf16 rounding only.
    assert metrics["policy/approx_kl"] < 1e-3
    assert abs(metrics["policy/ratio_mean"] - 1.0) < 0.02
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert after.dtype == torch.float32 and not torch.equal(before, after)


def test_bf16_sft_lowers_the_loss(tiny_model_dir):
    from agentrl.envs import make_env
    from agentrl.rollout import collect_demonstrations

    torch.manual_seed(0)
    model, tok = load_model(tiny_model_dir)
    demos = collect_demonstrations(lambda: make_env("agentrl/Arithmetic-v0"), range(32), tok)
    history = sft_train(model, tok, demos, epochs=3, batch_size=8, lr=3e-3, warmup_steps=0,
                        autocast=torch.bfloat16)
    assert history[-1]["sft/loss"] < history[0]["sft/loss"] - 0.5
    assert next(model.parameters()).dtype == torch.float32
