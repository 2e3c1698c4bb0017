"""LoRA adapters through peft: only adapters train, checkpoints hold the adapter and resume
exactly, merged weights compute what the adapted model computes, samples and the trainer's
log-probs agree."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from agentrl.config import ConfigError, LoraConfig, load_config
from agentrl.envs import make_env
from agentrl.generation import HFGenerator
from agentrl.models import (
    adapter_config,
    adapter_state_dict,
    apply_lora,
    inference_state_dict,
    is_peft_model,
    load_model,
    merge_adapter,
)
from agentrl.models.lora import adapters_disabled, load_adapter_checkpoint, trainable_parameters
from agentrl.training import RLTrainer, latest_checkpoint, read_metrics
from agentrl.training.checkpoint import CheckpointMismatch, load_policy_weights
from agentrl.training.logprobs import token_logprobs
from agentrl.training.shared_prefix import plan_shared_prefixes, supports_shared_prefix
from agentrl.types import SamplingParams

ALL_LINEAR = LoraConfig(r=4, alpha=8.0, target_modules="all-linear")


def _trained_looking(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the adapters values a few updates would (fresh ones are zero: B = 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model


def _adapted(tiny_model_dir, settings: LoraConfig = ALL_LINEAR):
    model, tokenizer = load_model(tiny_model_dir)
    torch.manual_seed(0)
    return _trained_looking(apply_lora(model, settings)), tokenizer


# --- applying adapters -------------------------------------------------------------------------


def test_only_adapters_train_and_the_fresh_model_computes_the_base(tiny_model_dir):
    base, _ = load_model(tiny_model_dir)
    model, _ = load_model(tiny_model_dir)
    model = apply_lora(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert is_peft_model(model) and not is_peft_model(base)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert {name.split(".")[-4] for name in trainable} == {"q_proj", "v_proj"}
    share, total = trainable_parameters(model)
    assert total == sum(p.numel() for p in base.parameters()) + share
    ids = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)  # B = 0


def test_target_modules_naming_nothing_is_one_config_error_listing_the_modules(tiny_model_dir):
    model, _ = load_model(tiny_model_dir)
    with pytest.raises(ConfigError) as raised:
        apply_lora(model, LoraConfig(target_modules=["q_proj", "attn_qkv"]))
    message = str(raised.value)
    assert "\n" not in message and "attn_qkv" in message and "model.lora.target_modules" in message
    for existing in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert existing in message
    assert not is_peft_model(model)
    with pytest.raises(ConfigError, match="at least one module"):
        load_config(None, ["model.lora={target_modules: []}"])


def test_agentrl_train_with_unknown_target_modules_fails_in_one_line(tmp_path, tiny_model_dir):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("run: {name: bad_lora}\nmodel: {lora: {r: 4, target_modules: [q_proj, qkv_proj]}}\n")
    # The check comes before the SFT warm-up (which would take minutes on a real model).
    result = subprocess.run([sys.executable, "-m", "agentrl.cli", "train", str(recipe),
                             f"run.out_dir={tmp_path}", f"model.path={tiny_model_dir}", "sft.demos=16"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]  # (not the load bars)
    assert len(errors) == 1 and errors[0].startswith("error: model.lora.target_modules: qkv_proj"), errors
    assert "Traceback" not in result.stderr
    assert "q_proj" in errors[0].split(";")[1]
    assert not (tmp_path / "bad_lora" / "sft_model").exists()


# --- merged weights and the adapter alone ------------------------------------------------------


def test_the_merged_state_dict_gives_the_peft_models_logits_without_touching_it(tiny_model_dir):
    model, _ = _adapted(tiny_model_dir)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    merged = inference_state_dict(model)

    plain, _ = load_model(tiny_model_dir)
    assert set(merged) == set(plain.state_dict())  # the plain HF names: no base_layer, no lora_
    plain.load_state_dict(merged)
    ids = torch.randint(0, 300, (3, 16))
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
        with adapters_disabled(model):  # the adapters do change the output
            assert not torch.allclose(plain(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-3)

    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)  # nothing merged in place
    assert all(p.requires_grad == (".lora_" in name) for name, p in model.named_parameters())


def test_the_adapter_alone_is_what_peft_saves(tiny_model_dir, tmp_path):
    model, _ = _adapted(tiny_model_dir, LoraConfig(r=4, alpha=8.0, target_modules=["q_proj", "v_proj"]))
    adapter = adapter_state_dict(model)
    assert adapter and all(".lora_A." in key or ".lora_B." in key for key in adapter)
    settings = adapter_config(model)
    assert settings["r"] == 4 and settings["lora_alpha"] == 8.0
    assert sorted(settings["target_modules"]) == ["q_proj", "v_proj"]
    json.dumps(settings)  # ready for adapter_config.json
    model.save_pretrained(tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert saved.keys() == adapter.keys()
    assert all(torch.equal(saved[key], adapter[key]) for key in adapter)


# --- sampling and the trainer's log-probs ------------------------------------------------------


def test_samples_and_the_trainers_logprobs_agree_on_a_peft_model(tiny_model_dir):
    model, tokenizer = _adapted(tiny_model_dir)
    prompts = [tokenizer.encode(text) for text in ("What is 3 + 4?", "compute the sum of", "the result is 12")]
    generator = HFGenerator(model, tokenizer, max_batch_size=2)
    params = SamplingParams(temperature=0.8, max_new_tokens=12, seed=5)
    with generator.prefix_cache():  # the KV cache, also across calls
        completions = generator.generate(prompts, params)
        again = generator.generate(prompts, params)
    assert [c.token_ids for c in again] == [c.token_ids for c in completions]
    assert sum(c.prompt_cached_tokens for c in again) > 0

    rows = [prompt + c.token_ids for prompt, c in zip(prompts, completions)]
    width = max(map(len, rows))
    ids = torch.tensor([row + [0] * (width - len(row)) for row in rows])
    attention = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    with torch.no_grad():
        trainer_logprobs, _ = token_logprobs(model, ids, attention, temperature=0.8)
    for i, (prompt, c) in enumerate(zip(prompts, completions)):
        sampled = torch.tensor(c.logprobs)
        assert torch.allclose(trainer_logprobs[i, len(prompt):len(rows[i])], sampled, atol=1e-4)

    # The shared-prefix update (each common prefix forwarded once through the KV cache) runs on
    # the peft model too, with the same numbers.
    assert supports_shared_prefix(model)
    shared_rows = [prompts[0] + c.token_ids for c in completions]
    width = max(map(len, shared_rows))
    ids = torch.tensor([row + [0] * (width - len(row)) for row in shared_rows])
    attention = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in shared_rows])
    plan = plan_shared_prefixes(shared_rows, [0, 0, 0])
    assert plan is not None
    with torch.no_grad():
        plain, _ = token_logprobs(model, ids, attention)
        shared, _ = token_logprobs(model, ids, attention, prefix_plan=plan)
    assert torch.allclose(plain * attention, shared * attention, atol=1e-4)


# --- RL with adapters: what trains, what checkpoints hold, resume ------------------------------


class MergedCopyGenerator(HFGenerator):
    """A sampler over its own plain copy of the model, like an inference engine: it hears of
    updates only through `sync_weights`, which sends the merged weights."""

    def __init__(self, tiny_model_dir, tokenizer) -> None:
        plain, _ = load_model(tiny_model_dir)
        super().__init__(plain, tokenizer, max_batch_size=64)
        self.syncs = 0

    def sync_weights(self, model: torch.nn.Module) -> None:  # noqa: D102 - the protocol's method
        self.model.load_state_dict(inference_state_dict(model))
        self.syncs += 1


def _lora_trainer(tmp_path, tiny_model_dir, name, generator=None):
    # Arithmetic with a random model earns no reward, so an entropy bonus and a KL term (to
    # the base: the adapters disabled) give every iteration a gradient.
    config = load_config(None, [
        f"run.out_dir={tmp_path}", f"run.name={name}", "run.seed=3", "env.id=agentrl/Arithmetic-v0",
        "model.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj, up_proj]}",
        "rollout.group_size=4", "rollout.tasks_per_iteration=2", "rollout.max_new_tokens=6",
        "train.iterations=3", "train.lr=5e-2", "train.warmup_steps=0", "train.checkpoint_every=1",
        "train.keep_checkpoints=3", "algorithm.entropy_coef=0.05", "algorithm.kl_coef=0.01",
    ])
    model, tokenizer = load_model(tiny_model_dir)
    torch.manual_seed(0)  # (the adapters' A is drawn from torch's RNG)
    model = apply_lora(model, config.model.lora)
    return RLTrainer(config, tmp_path / name, model, tokenizer, lambda: make_env("agentrl/Arithmetic-v0"),
                     generator=generator)


def _base_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in inference_state_dict(_with_adapters_zeroed(model)).items()}


def _with_adapters_zeroed(model):
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for name, parameter in zeroed.named_parameters():
            if "lora_B" in name:
                parameter.zero_()
    return zeroed


def _adapter_vector(model) -> torch.Tensor:
    return torch.cat([value.flatten() for value in adapter_state_dict(model).values()])


def test_a_lora_rl_run_trains_only_adapters_checkpoints_them_and_resumes_exactly(tmp_path, tiny_model_dir):
    original, tokenizer = load_model(tiny_model_dir)
    generator = MergedCopyGenerator(tiny_model_dir, tokenizer)
    straight = _lora_trainer(tmp_path, tiny_model_dir, "straight", generator=generator)
    optimized = {id(p) for group in straight.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for name, p in straight.model.named_parameters() if ".lora_" in name}
    assert straight.ref_model is straight.model  # the KL reference is the base, not a copy
    straight.train()

    # Only the adapters moved: every base weight is bit-identical to the loaded model's.
    base = _base_weights(straight.model)
    assert all(torch.equal(base[key], value) for key, value in original.state_dict().items())
    assert _adapter_vector(straight.model).abs().sum() > 0
    assert any(name.endswith("lora_B.default.weight") and p.abs().sum() > 0
               for name, p in straight.model.named_parameters())
    metrics = [m for m in read_metrics(tmp_path / "straight") if "loss/kl" in m]
    assert len(metrics) == 3 and metrics[-1]["loss/kl"] > 0
    # The generator with its own copy was sent the merged weights after every update.
    assert generator.syncs == 3
    merged = inference_state_dict(straight.model)
    assert all(torch.equal(value, merged[key]) for key, value in generator.model.state_dict().items())

    # The checkpoint holds the adapter (peft's files), not a copy of the base.
    checkpoint = latest_checkpoint(tmp_path / "straight")
    names = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "trainer.pt", "trainer_state.json"} <= names
    assert not names & {"model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"}
    base_bytes = sum(v.numel() * v.element_size() for v in original.state_dict().values())
    assert (checkpoint / "adapter_model.safetensors").stat().st_size < base_bytes / 4

    # Resume from iteration 2's checkpoint (as after a kill during iteration 3): the run ends
    # with the adapter weights of the uninterrupted one.
    split = tmp_path / "split"
    shutil.copytree(tmp_path / "straight", split)
    shutil.rmtree(split / "checkpoints" / "iter_000003")
    resumed = _lora_trainer(tmp_path, tiny_model_dir, "split")
    assert resumed.resume() and resumed.iteration == 2
    resumed_at_two = _adapter_vector(resumed.model)
    assert resumed_at_two.abs().sum() > 0  # (the adapters were restored, not fresh)
    assert resumed.optimizer.state  # (and AdamW's moments with them)
    resumed.train()
    assert torch.allclose(_adapter_vector(resumed.model), _adapter_vector(straight.model), atol=1e-6)
    assert [m["step"] for m in read_metrics(split) if "reward/mean" in m] == [1, 2, 3]

    # A recipe without model.lora cannot resume the adapter (nor the other way round).
    plain, _ = load_model(tiny_model_dir)
    with pytest.raises(CheckpointMismatch, match="holds a LoRA adapter"):
        load_policy_weights(plain, checkpoint)

    # Merging for serving: base + adapter as one plain model directory with the same outputs.
    served, _ = load_model(merge_adapter(checkpoint, tmp_path / "served", base=tiny_model_dir))
    ids = torch.randint(0, 300, (2, 10))
    at_checkpoint = _lora_trainer(tmp_path, tiny_model_dir, "check")
    load_policy_weights(at_checkpoint.model, checkpoint)
    loaded, _ = load_adapter_checkpoint(checkpoint, base=tiny_model_dir)
    with torch.no_grad():
        expected = at_checkpoint.model(input_ids=ids).logits
        assert torch.allclose(served(input_ids=ids).logits, expected, atol=1e-5)
        assert torch.allclose(loaded(input_ids=ids).logits, expected, atol=1e-5)


def test_a_full_weight_checkpoint_does_not_resume_into_adapters(tmp_path, tiny_model_dir):
    plain, tokenizer = load_model(tiny_model_dir)
    plain.save_pretrained(tmp_path / "full")
    model = apply_lora(plain, ALL_LINEAR)
    with pytest.raises(CheckpointMismatch, match="holds full model weights"):
        load_policy_weights(model, tmp_path / "full")


def test_agentrl_train_with_lora_trains_adapters_on_the_sft_model_resumes_and_evaluates(tmp_path, tiny_model_dir):
    from rich.console import Console

    from agentrl.eval.report import read_report
    from agentrl.eval.sources import eval_policy
    from agentrl.training.run import run_eval_only, run_training

    config = load_config(None, [
        f"run.out_dir={tmp_path}", "run.name=lora", f"model.path={tiny_model_dir}",
        "model.lora={r: 4, target_modules: [q_proj, v_proj]}", "env.id=agentrl/Arithmetic-v0",
        "sft.demos=8", "sft.epochs=1", "sft.batch_size=8", "eval.tasks=2", "rollout.tasks_per_iteration=2",
        "rollout.group_size=2", "rollout.max_new_tokens=4", "train.iterations=2", "train.checkpoint_every=1",
    ])
    console = Console(record=True, width=200)
    run_training(config, console=console)
    run_dir = tmp_path / "lora"
    assert "LoRA adapters:" in console.export_text()
    # The SFT warm-up trained every weight (a full model); RL then trained adapters on it.
    assert (run_dir / "sft_model" / "model.safetensors").is_file()
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint.name == "iter_000002" and (checkpoint / "adapter_model.safetensors").is_file()
    assert not (checkpoint / "model.safetensors").exists()
    assert json.loads((checkpoint / "adapter_config.json").read_text())["r"] == 4

    console = Console(record=True, width=200)
    run_training(config, resume=True, console=console)  # loads the SFT model, then the adapter
    assert "Resuming RL from iteration 2" in console.export_text()

    # The adapter records the SFT model as its base (not the model SFT started from), so
    # `agentrl eval --model CHECKPOINT` samples from SFT model + adapter, merged.
    recorded = json.loads((checkpoint / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str((run_dir / "sft_model").resolve())
    evaluated, _ = eval_policy(config, checkpoint, None, dtype=torch.float32)
    assert not is_peft_model(evaluated)
    expected, _ = load_model(run_dir / "sft_model")
    expected = apply_lora(expected, config.model.lora)
    load_policy_weights(expected, checkpoint)
    ids = torch.randint(0, 300, (2, 10))
    with torch.no_grad():
        assert torch.allclose(evaluated(input_ids=ids).logits, expected(input_ids=ids).logits, atol=1e-5)
    metrics, report = run_eval_only(config, checkpoint, console=Console(record=True, width=200))
    assert report == checkpoint / "eval" / "held_out.json"
    assert read_report(report)["model"] == str(checkpoint) and metrics["tasks"] == 2


def test_evaluating_an_adapter_whose_base_is_gone_says_how_to_merge_it(tmp_path, tiny_model_dir):
    from agentrl.eval.sources import eval_policy

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    model, tokenizer = load_model(base)
    apply_lora(model, ALL_LINEAR).save_pretrained(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    shutil.rmtree(base)
    config = load_config(None, ["env.id=agentrl/Arithmetic-v0"])
    with pytest.raises(FileNotFoundError) as raised:
        eval_policy(config, tmp_path / "adapter", None, dtype=torch.float32)
    message = str(raised.value)
    assert "\n" not in message and str(base) in message
    assert f"python -m agentrl.models.lora merge {tmp_path / 'adapter'} MERGED --base" in message
