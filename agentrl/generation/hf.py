"""In-process sampling from a transformers causal LM (the `hf` backend).

The generator holds the very module the trainer updates, so it always samples from the current
weights without any copying. It runs its own decode loop over the model's KV cache instead of
`model.generate`, which gives exact control over what training needs: the behaviour log-prob of
every sampled token, top-k log-probs, stop strings spanning several tokens, and rows that leave
the batch as soon as they finish.

How a call runs:
1. Prompts are sorted by length and cut into micro-batches of `max_batch_size`, so rows of one
   batch need little padding. Completions are returned in the caller's order.
2. Each micro-batch is left-padded; the attention mask hides the padding and position ids count
   only real tokens, so a padded row computes exactly what it would alone.
3. One prefill pass fills the cache; then each step samples one token per row, records its
   log-prob, checks EOS / stop strings / length, drops finished rows from the batch and cache,
   and feeds the new tokens back.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from agentrl.models.precision import autocast as autocast_to
from agentrl.types import Completion, FinishReason, SamplingParams


class HFGenerator:
    """Batched sampling with a KV cache from a transformers causal LM in this process.

    `model` is used in eval mode under `torch.no_grad()` and put back in the mode it was in.
    `device` defaults to the device of the model's parameters. `eos_token_ids` defaults to the
    tokenizer's EOS id plus those of the model's generation config; an explicit empty list
    turns EOS stopping off (rows then end only at a stop string or the length limit).
    `autocast` (e.g. torch.bfloat16) runs the forward passes under `torch.autocast` to that
    dtype; the trainer must use the same setting so that behaviour log-probs match its own.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_batch_size: int = 64,
        device: str | torch.device | None = None,
        eos_token_ids: list[int] | None = None,
        autocast: torch.dtype | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}.")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        if device is None:
            device = next(model.parameters()).device
        self.device = torch.device(device)
        self.autocast = autocast
        if eos_token_ids is None:
            self.eos_token_ids = self._default_eos_ids()
            if not self.eos_token_ids:
                raise ValueError(
                    "No end-of-sequence token id is known: the tokenizer has no eos_token and "
                    "the model's generation config names none. Pass eos_token_ids=[...] "
                    "explicitly (or [] to stop only at stop strings and the length limit)."
                )
        else:
            self.eos_token_ids = {int(i) for i in eos_token_ids}
        pad = tokenizer.pad_token_id
        # Padding is masked out, so its id only has to be a valid one.
        self.pad_token_id = pad if pad is not None else min(self.eos_token_ids, default=0)

    def _default_eos_ids(self) -> set[int]:
        ids: set[int] = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        config_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if isinstance(config_eos, int):
            ids.add(config_eos)
        elif config_eos is not None:
            ids.update(int(i) for i in config_eos)
        return ids

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        """Sample one completion per prompt; see `agentrl.generation.Generator` for the contract."""
        _check_params(prompts, params, vocab_size=self.model.config.vocab_size)
        if not prompts:
            return []
        rng = torch.Generator(device=self.device)
        if params.seed is None:
            rng.seed()
        else:
            rng.manual_seed(params.seed)

        # Sorting (stable, so ties keep their order and the result is deterministic) groups
        # prompts of similar length into the same micro-batch.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[Completion | None] = [None] * len(prompts)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), autocast_to(self.device, self.autocast):
                for start in range(0, len(order), self.max_batch_size):
                    rows = order[start : start + self.max_batch_size]
                    batch = self._generate_batch([prompts[i] for i in rows], params, rng)
                    for i, completion in zip(rows, batch):
                        results[i] = completion
        finally:
            self.model.train(was_training)
        return [c for c in results if c is not None]

    def _generate_batch(
        self, prompts: list[list[int]], params: SamplingParams, rng: torch.Generator
    ) -> list[Completion]:
        n = len(prompts)
        width = max(len(p) for p in prompts)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention_mask[row, width - len(prompt) :] = 1
        input_ids = input_ids.to(self.device)
        attention_mask = attention_mask.to(self.device)
        # Positions count real tokens only, so a left-padded row sees the positions it would
        # see unpadded (padding gets position 0; it is masked anyway).
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        next_position = torch.tensor([len(p) for p in prompts], device=self.device)

        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1, :].float()

        tokens: list[list[int]] = [[] for _ in range(n)]
        logprobs: list[list[float]] = [[] for _ in range(n)]
        tops: list[list[list[float]]] = [[] for _ in range(n)]
        finish: list[FinishReason] = ["length"] * n
        stop_strings: list[str | None] = [None] * n
        # A stop string of b bytes lies within the last b tokens (every token is >= 1 byte).
        stop_window = max((len(s.encode("utf-8")) for s in params.stop), default=0)

        active = list(range(n))  # batch row -> index into `prompts`
        for step in range(params.max_new_tokens):
            next_tokens, chosen, top = _sample(logits, params, rng)
            next_list = next_tokens.tolist()
            chosen_list = chosen.tolist()
            top_list = top.tolist() if top is not None else None

            keep: list[int] = []
            for j, row in enumerate(active):
                tokens[row].append(next_list[j])
                logprobs[row].append(chosen_list[j])
                if top_list is not None:
                    tops[row].append(top_list[j])
                if next_list[j] in self.eos_token_ids:
                    finish[row] = "eos"
                    continue
                if stop_window:
                    tail = self.tokenizer.decode(
                        tokens[row][-stop_window:], skip_special_tokens=False
                    )
                    # Earlier occurrences would have ended the row at an earlier step, so a
                    # match here was completed by the newest token.
                    matched = next((s for s in params.stop if s in tail), None)
                    if matched is not None:
                        finish[row], stop_strings[row] = "stop", matched
                        continue
                keep.append(j)
            if not keep or step == params.max_new_tokens - 1:
                break  # the rows still in `keep` finish with "length"

            if len(keep) < len(active):
                # Finished rows leave the batch, so later steps cost only what is still running.
                selected = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(selected)
                attention_mask = attention_mask[selected]
                next_position = next_position[selected]
                next_tokens = next_tokens[selected]
                active = [active[j] for j in keep]
            attention_mask = torch.cat(
                [attention_mask, attention_mask.new_ones((len(active), 1))], dim=-1
            )
            out = self.model(
                input_ids=next_tokens[:, None],
                attention_mask=attention_mask,
                position_ids=next_position[:, None],
                past_key_values=cache,
                use_cache=True,
            )
            next_position = next_position + 1
            logits = out.logits[:, -1, :].float()

        return [
            Completion(
                token_ids=tokens[row],
                logprobs=logprobs[row],
                finish_reason=finish[row],
                text=self.tokenizer.decode(tokens[row], skip_special_tokens=False),
                stop_string=stop_strings[row],
                top_logprobs=tops[row] if params.top_logprobs > 0 else None,
            )
            for row in range(n)
        ]


def _sample(
    logits: torch.Tensor, params: SamplingParams, rng: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Sample one token per row of `logits` (float32, shape [batch, vocab]).

    Returns the tokens, their log-probs under softmax(logits / temperature) (temperature 1 for
    greedy), and the top-k log-probs of that same distribution when asked for.
    """
    if params.temperature == 0:
        logp = torch.log_softmax(logits, dim=-1)
        tokens = logp.argmax(dim=-1)
    else:
        logp = torch.log_softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            # Nucleus: keep the most likely tokens until their mass reaches top_p (always at
            # least one), sample among them. The returned log-prob stays the untruncated one.
            sorted_logp, sorted_ids = logp.sort(dim=-1, descending=True)
            probs = sorted_logp.exp()
            mass_before = probs.cumsum(dim=-1) - probs
            probs = probs.masked_fill(mass_before >= params.top_p, 0.0)
            choice = torch.multinomial(probs, 1, generator=rng)
            tokens = sorted_ids.gather(-1, choice).squeeze(-1)
        else:
            tokens = torch.multinomial(logp.exp(), 1, generator=rng).squeeze(-1)
    chosen = logp.gather(-1, tokens[:, None]).squeeze(-1)
    top = logp.topk(params.top_logprobs, dim=-1).values if params.top_logprobs > 0 else None
    return tokens, chosen, top


def _check_params(prompts: list[list[int]], params: SamplingParams, *, vocab_size: int) -> None:
    """Reject requests that cannot be sampled, with a message that says what to change."""
    if params.temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {params.temperature}.")
    if not 0.0 < params.top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {params.top_p}.")
    if params.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {params.max_new_tokens}.")
    if not 0 <= params.top_logprobs <= vocab_size:
        raise ValueError(f"top_logprobs must be in [0, {vocab_size}], got {params.top_logprobs}.")
    if any(s == "" for s in params.stop):
        raise ValueError("Stop strings must be non-empty; remove the empty string from stop.")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(
                f"Prompt {i} is empty; a causal LM needs at least one token to condition on."
            )
        if min(prompt) < 0 or max(prompt) >= vocab_size:
            raise ValueError(
                f"Prompt {i} holds a token id outside the model's vocabulary [0, {vocab_size})."
            )
