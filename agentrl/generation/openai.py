"""Sampling from an OpenAI-compatible completions server (the `openai` backend), e.g. `vllm serve`.

Used for evaluation and for decoupled rollouts, where a separate server samples while this
process trains. Token ids travel both ways, never re-tokenized text.

What one request to `POST {base_url}/v1/completions` sends (one request per chunk of at most
`max_batch_size` prompts, or, when completions are seeded, one request per prompt with its own
seed, at most `max_batch_size` in flight: a server given one seed for a whole batch returns
identical completions for identical prompts, which would collapse every GRPO group):

    {"model": ..., "prompt": [[ids of prompt 0], [ids of prompt 1], ...],
     "max_tokens": ..., "temperature": ..., "top_p": ..., "stop": [...], "seed": ... (if seeded),
     "logprobs": max(top_logprobs, 1),          # the sampled token's log-prob (+ top-k)
     "return_tokens_as_token_ids": true,        # vLLM: tokens come back as "token_id:<id>"
     "include_stop_str_in_output": true,        # vLLM: keep the stop string in the output
     "skip_special_tokens": false}              # vLLM: keep EOS etc. in the text

and what it reads from each choice (matched to its prompt by `index`): `token_ids` when the
server returns them, else the ids parsed from `logprobs.tokens`; `logprobs.token_logprobs`;
`logprobs.top_logprobs` (the k largest values); `finish_reason` with vLLM's `stop_reason`:
"length" stays "length", "stop" with a string `stop_reason` is a stop-string stop, any other
"stop" is an EOS stop (vLLM keeps the EOS id in the output ids).

Log-prob semantics: vLLM returns log-probs of the raw model distribution (temperature 1) by
default. To match this package's convention (after temperature, before top-p) start the server
with `--logprobs-mode processed_logprobs` and sample with top_p = 1, or sample at temperature 1.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from agentrl.generation.seeding import row_seeds
from agentrl.types import Completion, FinishReason, SamplingParams


class OpenAIGenerator:
    """A `Generator` over HTTP against an OpenAI-compatible `/v1/completions` endpoint.

    `base_url` may end with or without `/v1`. Transport errors and 5xx answers are retried
    `max_retries` times with exponential backoff; then a RuntimeError says what failed.
    Use as a context manager or call `close()` to release the HTTP connection pool.
    """

    #: fills `Completion.top_logprobs` from the server's `logprobs.top_logprobs` (vLLM returns them)
    returns_top_logprobs = True

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 300.0,
        *,
        max_batch_size: int = 256,
        max_retries: int = 2,
    ) -> None:
        base = base_url.rstrip("/")
        self.url = (base if base.endswith("/v1") else base + "/v1") + "/completions"
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_retries = max_retries
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout, headers=headers)

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, seeds: list[int] | None = None
    ) -> list[Completion]:
        """Sample one completion per prompt; see `agentrl.generation.Generator` for the contract."""
        per_row = row_seeds(len(prompts), seeds, params.seed)
        if any(seed is not None for seed in per_row):
            # One request per prompt, each with its own seed, sent concurrently.
            with ThreadPoolExecutor(max_workers=max(1, min(self.max_batch_size, len(prompts)))) as pool:
                return list(pool.map(
                    lambda prompt, seed: self._generate_chunk([prompt], params, seed)[0], prompts, per_row
                ))
        completions: list[Completion] = []
        for start in range(0, len(prompts), self.max_batch_size):
            chunk = prompts[start : start + self.max_batch_size]
            completions.extend(self._generate_chunk(chunk, params, None))
        return completions

    def check_server(self, tokenizer: Any | None = None) -> None:
        """Fail before the first rollout, with one line, when the server cannot be used: it does
        not answer, does not serve `self.model`, or (given the trainer's `tokenizer`) splits
        text into other ids than the trainer's tokenizer does. The tokenizer check uses the
        server's `/tokenize` (vLLM's); a server without one is not checked."""
        root = self.url[: -len("/v1/completions")]
        try:
            response = self._client.get(root + "/v1/models")
        except httpx.TransportError as exc:
            raise ServerUnavailable(
                f"No OpenAI-compatible server answers at {root} ({exc!r}); start it (e.g. `python -m "
                f"vllm.entrypoints.openai.api_server --model PATH --served-model-name {self.model}`) or "
                "fix generation.base_url") from None
        if response.status_code >= 400:
            raise ServerUnavailable(f"{root}/v1/models answered HTTP {response.status_code}; is this an "
                                    "OpenAI-compatible server? Fix generation.base_url")
        served = [m.get("id") for m in response.json().get("data", [])]
        if self.model not in served:
            raise ServerUnavailable(f"The server at {root} serves {served}, not '{self.model}'; set "
                                    "generation.model to the served model name")
        if tokenizer is None:
            return
        probe = "Tokenizer check: 12 + 345 = 357 <answer>Paris</answer>\n"
        answer = self._client.post(root + "/tokenize", json={"model": self.model, "prompt": probe,
                                                             "add_special_tokens": False})
        if answer.status_code == 404:
            return  # not a vLLM server: nothing to compare against
        theirs = [int(t) for t in answer.json().get("tokens", [])]
        ours = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
        if theirs != ours:
            raise TokenizerMismatch(
                f"The server's model '{self.model}' tokenizes text differently from the trainer's "
                f"tokenizer ({len(theirs)} vs {len(ours)} ids for the same probe, first difference at "
                f"position {_first_difference(theirs, ours)}): token ids would mean other words. Serve "
                "the same checkpoint the trainer loads (model.path), or set generation.check_tokenizer=false "
                "only if you know they agree")

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OpenAIGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _generate_chunk(
        self, prompts: list[list[int]], params: SamplingParams, seed: int | None
    ) -> list[Completion]:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompts,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "logprobs": max(params.top_logprobs, 1),
            "return_tokens_as_token_ids": True,
            "include_stop_str_in_output": True,
            "skip_special_tokens": False,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if seed is not None:
            body["seed"] = seed
        choices = self._post(body)["choices"]
        if len(choices) != len(prompts):
            raise RuntimeError(
                f"{self.url} returned {len(choices)} choices for {len(prompts)} prompts; "
                "the server must answer a list of token-id prompts with one choice each."
            )
        by_index = sorted(choices, key=lambda c: c["index"])
        return [_parse_choice(c, params.top_logprobs) for c in by_index]

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(self.max_retries + 1):
            try:
                response = self._client.post(self.url, json=body)
            except httpx.TransportError as exc:
                problem = f"could not reach {self.url}: {exc!r}"
            else:
                if response.status_code < 400:
                    return response.json()
                problem = f"{self.url} answered HTTP {response.status_code}: {response.text[:500]}"
                if response.status_code < 500:
                    break  # the request itself is wrong; retrying will not help
            if attempt < self.max_retries:
                time.sleep(0.5 * 2**attempt)
        raise RuntimeError(
            f"Completion request failed: {problem}. Check that an OpenAI-compatible server "
            f"(e.g. `vllm serve {self.model}`) is running there and serves model '{self.model}'."
        )


class ServerUnavailable(RuntimeError):
    """The OpenAI-compatible server does not answer, or does not serve the named model."""


class TokenizerMismatch(RuntimeError):
    """The served model's tokenizer splits text into other ids than the trainer's."""


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _parse_choice(choice: dict[str, Any], top_k: int) -> Completion:
    logprobs = choice.get("logprobs") or {}
    if choice.get("token_ids") is not None:
        token_ids = [int(t) for t in choice["token_ids"]]
    else:
        token_ids = [_token_id(t) for t in logprobs.get("tokens", [])]
    token_logprobs = [float(x) for x in logprobs.get("token_logprobs", [])]
    if len(token_logprobs) != len(token_ids):
        raise RuntimeError(
            f"The server returned {len(token_ids)} tokens but {len(token_logprobs)} log-probs; "
            "it must support `logprobs` and `return_tokens_as_token_ids` (vLLM does)."
        )
    top: list[list[float]] | None = None
    if top_k > 0:
        top = [
            sorted((float(v) for v in (position or {}).values()), reverse=True)[:top_k]
            for position in logprobs.get("top_logprobs", [])
        ]
    stop_reason = choice.get("stop_reason")
    finish: FinishReason
    if choice.get("finish_reason") == "length":
        finish, stop_string = "length", None
    elif isinstance(stop_reason, str):
        finish, stop_string = "stop", stop_reason
    else:
        finish, stop_string = "eos", None
    return Completion(
        token_ids=token_ids,
        logprobs=token_logprobs,
        finish_reason=finish,
        text=choice.get("text", ""),
        stop_string=stop_string,
        top_logprobs=top,
    )


def _token_id(token: str) -> int:
    """Parse vLLM's "token_id:<id>" form of a token."""
    prefix, _, value = token.partition(":")
    if prefix != "token_id" or not value.lstrip("-").isdigit():
        raise RuntimeError(
            f"Expected tokens of the form 'token_id:<id>', got {token!r}; the server must "
            "support `return_tokens_as_token_ids` (vLLM does)."
        )
    return int(value)
