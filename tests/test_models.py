"""The offline tiny model: tokenizer, ChatML template, save/load through the Auto classes."""

from __future__ import annotations

import inspect

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from agentrl.models import CHATML_TEMPLATE, build_tiny_model, load_model, train_tokenizer

CONVERSATION = [
    {"role": "system", "content": "You are a calculator. Answer in <answer></answer> tags."},
    {"role": "user", "content": "What is 12 + 30?"},
    {"role": "assistant", "content": "<python>print(12 + 30)</python>"},
    {"role": "tool", "content": "42"},
    {"role": "assistant", "content": "<answer>42</answer>"},
    {"role": "user", "content": "And 7 * 6?"},
]

TRICKY_TEXTS = [
    "plain ascii with  double  spaces\n\n\tand tabs",
    "unicode: déjà vu, 日本語, emoji 🙂👍🏽, Ω≈ç√∫",
    "<answer>-3.14e10</answer> x=12345678; y = 0x1F",
    "special tokens inline <|im_start|>user\nhi<|im_end|>\n",
    "",
]


def test_tokenizer_round_trips_text(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for text in TRICKY_TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids, skip_special_tokens=False) == text


def test_tokenizer_special_tokens(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|endoftext|>"
    assert tok.eos_token_id != tok.pad_token_id
    # Special tokens are single ids, never split into bytes.
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    assert tok.encode("<|im_start|>", add_special_tokens=False) == [im_start]
    assert len(tok) <= 300


def test_digits_are_single_tokens(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    # The training text is full of numbers, so BPE would merge digits if it were allowed to.
    ids = tok.encode("12345 + 67890 = 80235", add_special_tokens=False)
    pieces = [tok.decode([i]) for i in ids]
    for digit in "0123456789":
        assert digit in pieces
    assert all(not (len(p) > 1 and any(c.isdigit() for c in p)) for p in pieces), pieces


def test_trained_and_loaded_tokenizers_agree(tiny_model_dir, tiny_model_texts):
    trained = train_tokenizer(tiny_model_texts, vocab_size=300)
    loaded = AutoTokenizer.from_pretrained(tiny_model_dir)
    for text in TRICKY_TEXTS + ["<|im_start|>assistant\n<answer>4</answer><|im_end|>\n"]:
        assert _ids(trained, text) == _ids(loaded, text)


def test_chat_template_renders_chatml(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tok.chat_template == CHATML_TEMPLATE
    text = tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a calculator. Answer in <answer></answer> tags.<|im_end|>\n"
        "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    no_prompt = tok.apply_chat_template(CONVERSATION[:2], tokenize=False)
    assert not no_prompt.endswith("<|im_start|>assistant\n")


def test_chat_template_tools_go_into_system_message(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tool = {"type": "function", "function": {"name": "python", "description": "Run code."}}
    with_system = tok.apply_chat_template(CONVERSATION[:2], tools=[tool], tokenize=False)
    assert with_system.startswith("<|im_start|>system\nYou are a calculator.")
    assert '"name": "python"' in with_system.split("<|im_end|>")[0]
    without_system = tok.apply_chat_template(CONVERSATION[1:2], tools=[tool], tokenize=False)
    assert without_system.startswith("<|im_start|>system\n# Tools")
    assert without_system.endswith("<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n")


def _ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def test_chat_template_is_append_safe(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tool = {"type": "function", "function": {"name": "python"}}
    for tools in (None, [tool]):
        for k in range(1, len(CONVERSATION)):
            # What the rollout engine does: render the prompt once, then append the ids of the
            # text each later message adds. The generation prompt belongs to the prefix exactly
            # when the next message is the model's.
            gen_prompt = CONVERSATION[k]["role"] == "assistant"
            prefix = tok.apply_chat_template(
                CONVERSATION[:k], tools=tools, tokenize=False, add_generation_prompt=gen_prompt
            )
            full = tok.apply_chat_template(
                CONVERSATION, tools=tools, tokenize=False, add_generation_prompt=True
            )
            assert full.startswith(prefix)
            delta = full[len(prefix):]
            assert _ids(tok, prefix) + _ids(tok, delta) == _ids(tok, full)
            tokenized = tok.apply_chat_template(
                CONVERSATION, tools=tools, tokenize=True, add_generation_prompt=True
            )
            if hasattr(tokenized, "keys"):  # transformers 5 returns a BatchEncoding
                tokenized = tokenized["input_ids"]
            assert list(tokenized) == _ids(tok, full)


def test_save_and_load_give_identical_logits(tiny_model_dir, tmp_path):
    model, tok = load_model(tiny_model_dir)
    assert not model.training
    assert model.config.model_type == "qwen2"
    assert model.config.tie_word_embeddings
    embeddings = model.get_input_embeddings().weight
    assert embeddings.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    ids = torch.tensor([_ids(tok, "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n")])
    with torch.no_grad():
        logits = model(ids).logits

    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    again_tok = AutoTokenizer.from_pretrained(tmp_path)
    assert _ids(again_tok, "hello 123") == _ids(tok, "hello 123")
    with torch.no_grad():
        assert torch.equal(again(ids).logits, logits)
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)


def test_build_is_seeded(tmp_path):
    texts = ["What is 1 + 2? <answer>3</answer>"] * 20
    small = dict(vocab_size=280, hidden_size=32, num_layers=1, intermediate_size=64)
    a = build_tiny_model(texts, tmp_path / "a", **small)
    b = build_tiny_model(texts, tmp_path / "b", **small)
    c = build_tiny_model(texts, tmp_path / "c", **small, seed=1)
    wa = AutoModelForCausalLM.from_pretrained(a).state_dict()
    wb = AutoModelForCausalLM.from_pretrained(b).state_dict()
    wc = AutoModelForCausalLM.from_pretrained(c).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_default_size_is_about_three_million_parameters():
    # The demo is budgeted for a ~3.2M-parameter model; keep the defaults near it.
    defaults = {k: v.default for k, v in inspect.signature(build_tiny_model).parameters.items()}
    config = Qwen2Config(
        vocab_size=defaults["vocab_size"],
        hidden_size=defaults["hidden_size"],
        intermediate_size=defaults["intermediate_size"],
        num_hidden_layers=defaults["num_layers"],
        num_attention_heads=defaults["num_heads"],
        num_key_value_heads=defaults["num_kv_heads"],
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        n = sum(p.numel() for p in Qwen2ForCausalLM(config).parameters())
    assert 3.0e6 < n < 3.5e6


def test_load_model_explains_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_tiny_model"):
        load_model(tmp_path / "nothing-here")
