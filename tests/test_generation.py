"""Generators: the HF sampler against fresh forward passes; the OpenAI client over real HTTP."""

from __future__ import annotations

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from agentrl.generation import Generator, HFGenerator, OpenAIGenerator
from agentrl.models import load_model
from agentrl.types import SamplingParams

PROMPT_TEXTS = [
    "a",
    "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n",
    "the result is",
    "<|im_start|>system\nYou compute sums. Reply with <answer></answer>.<|im_end|>\n"
    "<|im_start|>user\nWhat is 512 + 7? Show the python.<|im_end|>\n<|im_start|>assistant\n",
    "search python",
]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def prompts(model_and_tokenizer):
    _, tok = model_and_tokenizer
    ids = [tok.encode(t, add_special_tokens=False) for t in PROMPT_TEXTS]
    assert len({len(p) for p in ids}) == len(ids), "prompts must differ in length to test padding"
    return ids


def fresh_logprobs(model, prompt: list[int], completion: list[int], temperature: float):
    """Log-probs of `completion` after `prompt` from one unpadded, uncached forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0].float()
    logp = torch.log_softmax(logits[len(prompt) - 1 : -1] / temperature, dim=-1)
    return logp


def sampled_logprobs(logp: torch.Tensor, completion: list[int]) -> torch.Tensor:
    return logp.gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 1.0), (0.7, 0.8)])
def test_logprobs_equal_fresh_forward(model_and_tokenizer, prompts, temperature, top_p):
    model, tok = model_and_tokenizer
    # Batch size 3 over 5 prompts: two micro-batches, both with left padding.
    gen = HFGenerator(model, tok, max_batch_size=3)
    params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=24, seed=3)
    completions = gen.generate(prompts, params)
    assert len(completions) == len(prompts)
    for prompt, c in zip(prompts, completions):
        assert len(c.token_ids) == len(c.logprobs)
        # A random model may sample EOS early; otherwise the row runs to the limit.
        assert c.finish_reason == "eos" or (c.finish_reason == "length" and len(c.token_ids) == 24)
        logp = fresh_logprobs(model, prompt, c.token_ids, temperature)
        expected = sampled_logprobs(logp, c.token_ids)
        assert torch.allclose(torch.tensor(c.logprobs), expected, atol=1e-4)


def test_greedy_is_argmax_of_fresh_forward(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    gen = HFGenerator(model, tok, max_batch_size=8)
    completions = gen.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=20))
    for prompt, c in zip(prompts, completions):
        logp = fresh_logprobs(model, prompt, c.token_ids, temperature=1.0)
        assert c.token_ids == logp.argmax(-1).tolist()
        assert torch.allclose(torch.tensor(c.logprobs), logp.max(-1).values, atol=1e-4)
    # Padding changes nothing: each prompt alone gives the same greedy completion.
    for prompt, c in zip(prompts, completions):
        alone = gen.generate([prompt], SamplingParams(temperature=0.0, max_new_tokens=20))[0]
        assert alone.token_ids == c.token_ids


def test_results_follow_input_order(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    gen = HFGenerator(model, tok, max_batch_size=2)
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    forward = gen.generate(prompts, params)
    backward = gen.generate(prompts[::-1], params)
    assert [c.token_ids for c in backward] == [c.token_ids for c in forward][::-1]


def test_same_seed_same_output(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    gen = HFGenerator(model, tok, max_batch_size=2)
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=16, seed=7)
    first = gen.generate(prompts, params)
    second = gen.generate(prompts, params)
    params.seed = 8
    other = gen.generate(prompts, params)
    assert [c.token_ids for c in first] == [c.token_ids for c in second]
    assert [c.logprobs for c in first] == [c.logprobs for c in second]
    assert [c.token_ids for c in first] != [c.token_ids for c in other]


def test_stop_string_spanning_tokens_ends_the_row(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    gen = HFGenerator(model, tok)
    prompt = prompts[1]
    # With one row and the same seed, a run with stop strings samples the same tokens as a run
    # without, up to where it stops.
    sample = SamplingParams(temperature=1.0, max_new_tokens=30, seed=5)
    free = gen.generate([prompt], sample)[0].token_ids
    # Take the text of three consecutive sampled tokens as the stop string, at a place where
    # it first appears exactly at the end of a token.
    for end in range(3, len(free)):
        stop = tok.decode(free[end - 3 : end])
        prefix_text = tok.decode(free[:end])
        if "\ufffd" in stop or stop.strip() == "" or stop in tok.decode(free[: end - 1]):
            continue
        if prefix_text.endswith(stop):
            break
    else:
        pytest.fail("the sampled continuation has no clean three-token stop string")

    sample.stop = ["@@never", stop]
    c = gen.generate([prompt], sample)[0]
    assert c.finish_reason == "stop"
    assert c.stop_string == stop
    assert c.token_ids == free[:end]
    assert c.text.endswith(stop)
    assert len(c.logprobs) == len(c.token_ids)


def test_stop_strings_with_sampling_and_rows_leaving_the_batch(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    gen = HFGenerator(model, tok, max_batch_size=16)
    stops = ["e", "t", "a"]
    params = SamplingParams(temperature=1.0, max_new_tokens=40, stop=stops, seed=0)
    many = prompts * 3
    completions = gen.generate(many, params)
    stopped = [len(c.token_ids) for c in completions if c.finish_reason == "stop"]
    assert stopped, "expected some rows to hit a stop string"
    # Some rows ran on after others had left the batch.
    assert max(len(c.token_ids) for c in completions) > min(stopped)
    for prompt, c in zip(many, completions):
        if c.finish_reason == "stop":
            assert c.stop_string in stops and c.stop_string in c.text
            # It stopped at the first token that completed a stop string, not later.
            assert not any(s in tok.decode(c.token_ids[:-1]) for s in stops)
        else:
            # An EOS row's text ends with the EOS token, which may spell a stop string itself
            # ("<|im_end|>" holds an "e"): only what came before it must be free of them.
            before_eos = c.token_ids[:-1] if c.finish_reason == "eos" else c.token_ids
            assert not any(s in tok.decode(before_eos) for s in stops)
        # Rows that stayed after others left the batch still sample from the right context.
        expected = sampled_logprobs(fresh_logprobs(model, prompt, c.token_ids, 1.0), c.token_ids)
        assert torch.allclose(torch.tensor(c.logprobs), expected, atol=1e-4)


def test_max_new_tokens_gives_length(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    c = HFGenerator(model, tok).generate(prompts[:1], SamplingParams(max_new_tokens=5, seed=0))[0]
    assert c.finish_reason == "length"
    assert len(c.token_ids) == 5
    assert c.text == tok.decode(c.token_ids, skip_special_tokens=False)


def test_eos_is_sampled_kept_and_ends_the_row(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    gen = HFGenerator(model, tok, max_batch_size=32)
    assert tok.eos_token_id in gen.eos_token_ids
    # A hot temperature makes the random model's next-token distribution nearly uniform, so
    # the real EOS token comes up within a few hundred samples.
    params = SamplingParams(temperature=4.0, max_new_tokens=60, seed=1)
    completions = gen.generate(prompts * 6, params)
    eos_rows = [c for c in completions if c.finish_reason == "eos"]
    assert eos_rows, "expected at least one row to sample EOS"
    for c in eos_rows:
        assert c.token_ids[-1] == tok.eos_token_id
        assert tok.eos_token_id not in c.token_ids[:-1]
        assert len(c.logprobs) == len(c.token_ids)
        assert c.text.endswith("<|im_end|>")


def test_custom_eos_ids(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    sample = SamplingParams(temperature=1.0, max_new_tokens=12, seed=2)
    free = HFGenerator(model, tok).generate(prompts[:1], sample)[0].token_ids
    cut = next(i for i in range(1, len(free)) if free[i] not in free[:i])
    c = HFGenerator(model, tok, eos_token_ids=[free[cut]]).generate(prompts[:1], sample)[0]
    assert c.finish_reason == "eos"
    assert c.token_ids == free[: cut + 1]
    # An empty list turns EOS stopping off: the hot sampling that hits EOS above runs to length.
    hot = SamplingParams(temperature=4.0, max_new_tokens=60, seed=1)
    no_eos = HFGenerator(model, tok, max_batch_size=32, eos_token_ids=[]).generate(prompts * 6, hot)
    assert all(c.finish_reason == "length" and len(c.token_ids) == 60 for c in no_eos)
    assert any(tok.eos_token_id in c.token_ids for c in no_eos)


def test_top_logprobs(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    gen = HFGenerator(model, tok)
    params = SamplingParams(temperature=0.7, max_new_tokens=10, top_logprobs=5, seed=0)
    for prompt, c in zip(prompts, gen.generate(prompts, params)):
        assert c.top_logprobs is not None and len(c.top_logprobs) == len(c.token_ids)
        logp = fresh_logprobs(model, prompt, c.token_ids, 0.7)
        for i, top in enumerate(c.top_logprobs):
            assert len(top) == 5
            assert top == sorted(top, reverse=True)
            assert c.logprobs[i] <= top[0] + 1e-6
            assert torch.allclose(torch.tensor(top), logp[i].topk(5).values, atol=1e-4)
    plain = gen.generate(prompts[:1], SamplingParams(max_new_tokens=3, seed=0))[0]
    assert plain.top_logprobs is None


def test_train_mode_is_restored_and_no_grad(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    model.train()
    try:
        HFGenerator(model, tok).generate(prompts[:2], SamplingParams(max_new_tokens=3, seed=0))
        assert model.training
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()


def test_bad_requests_are_refused(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    gen = HFGenerator(model, tok)
    with pytest.raises(ValueError, match="empty"):
        gen.generate([prompts[0], []], SamplingParams())
    with pytest.raises(ValueError, match="top_p"):
        gen.generate(prompts, SamplingParams(top_p=0.0))
    with pytest.raises(ValueError, match="vocabulary"):
        gen.generate([[10**6]], SamplingParams())
    assert gen.generate([], SamplingParams()) == []
    assert isinstance(gen, Generator)
    with pytest.raises(ValueError, match="prefix_cache_tokens"):
        HFGenerator(model, tok, prefix_cache_tokens=-1)


# --- prefix cache: the next turn prefills only what follows the last prompt + completion ---
# (branches forked from earlier turns: tests/test_prefix_cache_branches.py)


def _next_turn_prompts(tok, prompts, completions):
    """What a rollout sends next: each prompt + its completion + an observation."""
    observation = tok.encode("\n<|im_start|>user\nno.<|im_end|>\n", add_special_tokens=False)
    return [p + c.token_ids + observation for p, c in zip(prompts, completions)]


def _longest_cached(prompt, remembered):
    """What the prefix cache should reuse for `prompt`: its longest common prefix with any
    remembered sequence, leaving at least one token to prefill."""
    def common(a, b):
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return min(max((common(prompt, seq) for seq in remembered), default=0), len(prompt) - 1)


def test_prefix_cache_reuses_the_last_turn_and_matches_a_fresh_forward(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    params = SamplingParams(temperature=0.0, max_new_tokens=6)
    cached = HFGenerator(model, tok, max_batch_size=2)  # micro-batches mix hits and misses
    plain = HFGenerator(model, tok, max_batch_size=2, prefix_cache_tokens=0)
    with cached.prefix_cache():
        first = cached.generate(prompts[:3], params)
        assert cached.reused_prompt_tokens == 0
        # Three continued prompts and two never seen (prefilled whole, but for the first
        # tokens they may share with a remembered sequence, such as "<|im_start|>").
        second_prompts = _next_turn_prompts(tok, prompts[:3], first) + prompts[3:]
        second = cached.generate(second_prompts, params)
    # A finished row is remembered without its last token, whose keys were never computed.
    remembered = [p + c.token_ids[:-1] for p, c in zip(prompts[:3], first)]
    expected = [_longest_cached(p, remembered) for p in second_prompts]
    assert expected[:3] == [len(p) + len(c.token_ids) - 1 for p, c in zip(prompts[:3], first)]
    assert [c.prompt_cached_tokens for c in second] == expected
    assert cached.reused_prompt_tokens == sum(expected)
    reference = plain.generate(second_prompts, params)
    assert plain.reused_prompt_tokens == 0
    for prompt, c, ref in zip(second_prompts, second, reference):
        assert c.token_ids == ref.token_ids
        logp = fresh_logprobs(model, prompt, c.token_ids, temperature=1.0)
        assert torch.allclose(torch.tensor(c.logprobs), logp.max(-1).values, atol=1e-4)


def test_prefix_cache_only_inside_its_block(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    gen = HFGenerator(model, tok)
    params = SamplingParams(temperature=0.0, max_new_tokens=4)
    first = gen.generate(prompts, params)  # outside any block: nothing is kept
    assert gen.cached_prefix_tokens == 0
    with gen.prefix_cache():
        gen.generate(_next_turn_prompts(tok, prompts, first), params)
        assert gen.reused_prompt_tokens == 0
        assert gen.cached_prefix_tokens > 0
        with gen.prefix_cache():  # a nested block shares the outer one's entries
            again = gen.generate(prompts, params)
        # Each first prompt starts every remembered sequence of its episode: all of it but the
        # last token (the one that gives the next token's logits) comes from the cache.
        assert [c.prompt_cached_tokens for c in again] == [len(p) - 1 for p in prompts]
        assert [c.token_ids for c in again] == [c.token_ids for c in first]
        reused = gen.reused_prompt_tokens
        assert gen.cached_prefix_tokens > 0, "leaving the inner block keeps the outer one's entries"
    assert gen.cached_prefix_tokens == 0
    gen.generate(_next_turn_prompts(tok, prompts, first), params)  # the block has ended
    assert gen.reused_prompt_tokens == reused


def test_prefix_cache_drops_the_oldest_entries_beyond_its_budget(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    params = SamplingParams(temperature=0.0, max_new_tokens=3)
    short, long_ = sorted(prompts[:2], key=len)
    assert short[0] != long_[0], "the two episodes must share no prefix"
    # Room for the longer sequence alone: the second remembered row pushes the first out.
    budget = len(long_) + 2
    gen = HFGenerator(model, tok, prefix_cache_tokens=budget)
    with gen.prefix_cache():
        a = gen.generate([short], params)
        b = gen.generate([long_], params)
        assert gen.cached_prefix_tokens == len(long_) + 2
        gen.generate(_next_turn_prompts(tok, [long_], b), params)
        assert gen.reused_prompt_tokens == len(long_) + len(b[0].token_ids) - 1
        gen.generate(_next_turn_prompts(tok, [short], a), params)
        assert gen.reused_prompt_tokens == len(long_) + len(b[0].token_ids) - 1  # evicted: a miss
        assert gen.cached_prefix_tokens <= budget


# --- OpenAI-compatible client against a real HTTP server on loopback --------------------------


class _CannedCompletions(BaseHTTPRequestHandler):
    """Answers /v1/completions like vLLM does, with canned tokens chosen by the prompt's first id.

    first id 1 -> stops at a stop string, 2 -> samples EOS (id 99), 4 -> samples max_tokens
    random ids the way a seeded vLLM server does (the same seed and prompt give the same ids;
    no seed, fresh ones), else -> runs to max_tokens.
    """

    requests: list[dict] = []
    failures_left = 0

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization")
        type(self).requests.append({"path": self.path, "auth": auth, **body})
        if type(self).failures_left > 0:
            type(self).failures_left -= 1
            self._reply(503, {"error": "warming up"})
            return
        if body["model"] != "tiny":
            self._reply(404, {"error": {"message": f"model {body['model']} does not exist"}})
            return
        choices = []
        # Answer in reverse order: the client must match choices to prompts by index.
        for index, prompt in reversed(list(enumerate(body["prompt"]))):
            if prompt[0] == 1:
                ids, finish, reason = [7, 8], "stop", "</python>"
            elif prompt[0] == 2:
                ids, finish, reason = [7, 99], "stop", None
            elif prompt[0] == 4:
                rng = random.Random(repr((body["seed"], prompt)) if "seed" in body else None)
                ids, finish, reason = [rng.randrange(10, 60) for _ in range(body["max_tokens"])], "length", None
            else:
                ids, finish, reason = list(range(10, 10 + body["max_tokens"])), "length", None
            logprobs = [-0.5 - 0.1 * k for k in range(len(ids))]
            top = [
                {f"token_id:{t}": lp, "token_id:3": -0.1, "token_id:4": -3.0, "token_id:5": -4.0}
                for t, lp in zip(ids, logprobs)
            ]
            choices.append(
                {
                    "index": index,
                    "text": "".join(f"<{t}>" for t in ids),
                    "logprobs": {
                        "tokens": [f"token_id:{t}" for t in ids],
                        "token_logprobs": logprobs,
                        "top_logprobs": top,
                    },
                    "finish_reason": finish,
                    "stop_reason": reason,
                }
            )
        self._reply(200, {"id": "cmpl-1", "object": "text_completion", "choices": choices})

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def completions_server():
    _CannedCompletions.requests = []
    _CannedCompletions.failures_left = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CannedCompletions)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_openai_generator_round_trip(completions_server):
    params = SamplingParams(
        temperature=0.5, top_p=0.9, max_new_tokens=3, stop=["</python>"], top_logprobs=2
    )
    url = completions_server + "/v1/"
    with OpenAIGenerator(url, "tiny", api_key="secret", max_batch_size=2) as gen:
        assert isinstance(gen, Generator)
        out = gen.generate([[1, 5], [2], [3, 3, 3]], params)

    assert [c.finish_reason for c in out] == ["stop", "eos", "length"]
    assert out[0].token_ids == [7, 8] and out[0].stop_string == "</python>"
    assert out[1].token_ids == [7, 99] and out[1].stop_string is None
    assert out[2].token_ids == [10, 11, 12]
    assert out[2].logprobs == pytest.approx([-0.5, -0.6, -0.7])
    assert out[0].top_logprobs == [[-0.1, -0.5], [-0.1, -0.6]]
    assert out[0].text == "<7><8>"

    requests = _CannedCompletions.requests
    assert len(requests) == 2  # three prompts in chunks of two
    first = requests[0]
    assert first["path"] == "/v1/completions"
    assert first["auth"] == "Bearer secret"
    assert first["prompt"] == [[1, 5], [2]]
    assert first["max_tokens"] == 3 and first["temperature"] == 0.5 and first["top_p"] == 0.9
    assert first["stop"] == ["</python>"] and "seed" not in first and first["logprobs"] == 2
    assert first["return_tokens_as_token_ids"] is True
    assert first["include_stop_str_in_output"] is True


def test_openai_generator_seeds_every_prompt_on_its_own(completions_server):
    """A server given one seed for a batch answers identical prompts identically (vLLM does):
    a GRPO group would have zero variance. Seeded prompts go one per request, each with its
    own seed: identical prompts differ, and the same seeds reproduce the same completions."""
    params = SamplingParams(max_new_tokens=8, seed=4)
    group = [[4, 1, 2]] * 6
    with OpenAIGenerator(completions_server, "tiny", max_batch_size=4) as gen:
        first = gen.generate(group, params)
        again = gen.generate(group, params)
        explicit = gen.generate(group[:2], params, seeds=[11, 11])
    assert len({tuple(c.token_ids) for c in first}) == 6
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert explicit[0].token_ids == explicit[1].token_ids  # same seed, same prompt: same ids
    requests = _CannedCompletions.requests
    assert len(requests) == 6 + 6 + 2 and all(len(r["prompt"]) == 1 for r in requests)
    assert len({r["seed"] for r in requests[:6]}) == 6
    assert [r["seed"] for r in requests[-2:]] == [11, 11]


def test_openai_generator_retries_then_reports(completions_server):
    _CannedCompletions.failures_left = 1
    with OpenAIGenerator(completions_server, "tiny", max_retries=1) as gen:
        out = gen.generate([[3]], SamplingParams(max_new_tokens=2))
    assert out[0].token_ids == [10, 11]
    assert len(_CannedCompletions.requests) == 2

    with OpenAIGenerator(completions_server, "missing-model") as gen:
        with pytest.raises(RuntimeError, match="HTTP 404.*missing-model"):
            gen.generate([[3]], SamplingParams(max_new_tokens=2))

    with OpenAIGenerator("http://127.0.0.1:9", "tiny", max_retries=0, timeout=2) as gen:
        with pytest.raises(RuntimeError, match="could not reach"):
            gen.generate([[3]], SamplingParams(max_new_tokens=2))


# --- identical prompts of one batch are prefilled once ---------------------------------------


def test_identical_prompts_are_prefilled_once_and_sampled_independently(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    p, q = prompts[1], prompts[3]
    gen = HFGenerator(model, tok, max_batch_size=8)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=6)
    batch = gen.generate([p, q, p, p], greedy)
    assert gen.shared_prompt_tokens == 2 * len(p)
    assert [c.prompt_cached_tokens for c in batch] == [0, 0, len(p), len(p)]
    alone = HFGenerator(model, tok).generate([p, q], greedy)
    assert [c.token_ids for c in batch] == [alone[0].token_ids, alone[1].token_ids,
                                            alone[0].token_ids, alone[0].token_ids]
    unshared = HFGenerator(model, tok, share_identical_prompts=False)
    assert [c.token_ids for c in unshared.generate([p, q, p, p], greedy)] == [c.token_ids for c in batch]
    assert unshared.shared_prompt_tokens == 0
    # Sampling: the copies of a prompt draw their own tokens, each with its exact log-probs.
    sampled = gen.generate([p] * 6, SamplingParams(temperature=1.0, max_new_tokens=8, seed=1))
    assert len({tuple(c.token_ids) for c in sampled}) > 1
    for c in sampled:
        logp = fresh_logprobs(model, p, c.token_ids, temperature=1.0)
        assert torch.allclose(torch.tensor(c.logprobs), sampled_logprobs(logp, c.token_ids), atol=1e-4)
