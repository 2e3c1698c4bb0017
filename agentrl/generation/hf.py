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
3. One prefill pass fills the cache, computing each distinct prompt once (the G rollouts of a
   GRPO group send the same first prompt; its keys and values are copied to all G rows); then
   each step samples one token per row (each row from its own seed's noise, so rows that share
   a prompt still differ and a row's sample does not depend on its batch), records its log-prob, checks EOS / stop strings /
   length, drops finished rows from the batch and cache, and feeds the new tokens back.

Multi-turn rollouts call the generator once per turn, and an episode's next prompt is its last
prompt and completion plus the observation. Inside `with generator.prefix_cache():` (the rollout
engine opens one per run) the keys and values of every finished row are kept in a
`KVPrefixTree`, and a later prompt prefills only what follows its longest cached prefix (the
episode's last turn, or any earlier point of it that a branch forks from): the cached rows are
laid out left-padded in front of the new tokens, and the attention mask hides both paddings.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from agentrl.generation.prefix_tree import KV, NO_PREFIX, CachedPrefix, KVPrefixTree
from agentrl.generation.seeding import row_seeds
from agentrl.models.kv_cache import cache_kwargs, layer_states
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
    `prefix_cache_tokens` bounds the tokens whose keys and values `prefix_cache()` keeps (a
    prefix shared by several sequences counts once; the least recently used go first); 0 turns
    the prefix cache off. `share_identical_prompts=False` prefills
    every row, identical prompts included (for comparisons; the results are the same).
    """

    #: fills `Completion.top_logprobs` when `SamplingParams.top_logprobs` > 0
    returns_top_logprobs = True

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_batch_size: int = 64,
        device: str | torch.device | None = None,
        eos_token_ids: list[int] | None = None,
        autocast: torch.dtype | None = None,
        prefix_cache_tokens: int = 131_072,
        share_identical_prompts: bool = True,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}.")
        if prefix_cache_tokens < 0:
            raise ValueError(f"prefix_cache_tokens must be >= 0 (0 = off), got {prefix_cache_tokens}.")
        self.prefix_cache_tokens = prefix_cache_tokens
        self.share_identical_prompts = share_identical_prompts
        # The keys and values of finished sequences while a prefix_cache() block is open;
        # None outside one.
        self._prefixes: KVPrefixTree | None = None
        #: prompt tokens taken from the prefix cache instead of being prefilled, since creation
        self.reused_prompt_tokens = 0
        #: prompt tokens not prefilled because an identical prompt of the same batch was
        #: (the G rollouts of a GRPO group share their first prompt), since creation
        self.shared_prompt_tokens = 0
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

    @contextmanager
    def prefix_cache(self) -> Iterator["HFGenerator"]:
        """Reuse keys and values across calls inside this block (multi-turn rollouts).

        Within the block, the keys and values of every prompt + completion the generator
        finishes are kept, and a later prompt prefills only the tokens after its longest cached
        prefix, at any length: the next turn of an episode reuses the whole last turn, a branch
        forked from an earlier turn (in this call or any later one) reuses everything up to
        where it forks, and every branch of a node finds it, so a tree of rollouts prefills
        each shared node once. The cached values belong to the weights that computed them: do
        not change the weights inside the block. Leaving the block drops every entry; nested
        blocks share the outer one.
        """
        if self._prefixes is not None or self.prefix_cache_tokens == 0:
            yield self
            return
        self._prefixes = KVPrefixTree(self.prefix_cache_tokens)
        try:
            yield self
        finally:
            self._prefixes = None

    @property
    def cached_prefix_tokens(self) -> int:
        """Positions whose keys and values the open prefix cache holds (0 outside a block)."""
        return self._prefixes.tokens if self._prefixes is not None else 0

    def _lookup_all(self, prompts: list[list[int]]) -> list[CachedPrefix]:
        """For each prompt, the keys and values of its longest cached prefix that leaves at
        least one token to prefill."""
        if self._prefixes is None:
            return [NO_PREFIX] * len(prompts)
        return [self._prefixes.longest_prefix(prompt) for prompt in prompts]

    def _remember(self, sequence: list[int], cache: DynamicCache, attention_mask: torch.Tensor, j: int) -> None:
        """Keep row j's keys and values (its real positions) under the tokens they encode."""
        assert self._prefixes is not None, "only inside prefix_cache()"

        def keys_values_from(start: int) -> KV:
            # Indexing with a tensor copies: only the positions the cache lacks are kept.
            real = attention_mask[j].nonzero().squeeze(-1)[start:]
            return [(keys[j][:, real], values[j][:, real]) for keys, values in layer_states(cache)]

        self._prefixes.insert(sequence, keys_values_from)

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, seeds: list[int] | None = None
    ) -> list[Completion]:
        """Sample one completion per prompt; see `agentrl.generation.Generator` for the contract."""
        _check_params(prompts, params, vocab_size=self.model.config.vocab_size)
        if not prompts:
            return []
        noise = _row_uniforms(row_seeds(len(prompts), seeds, params.seed), params)

        cached = self._lookup_all(prompts)
        # Sorting (stable, so ties keep their order and the result is deterministic) groups
        # prompts with a similar number of tokens to prefill into the same micro-batch.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) - cached[i].length)
        results: list[Completion | None] = [None] * len(prompts)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), autocast_to(self.device, self.autocast):
                for start in range(0, len(order), self.max_batch_size):
                    rows = order[start : start + self.max_batch_size]
                    batch = self._generate_batch([prompts[i] for i in rows], [cached[i] for i in rows],
                                                 params, noise[rows] if noise is not None else None)
                    for i, completion in zip(rows, batch):
                        results[i] = completion
        finally:
            self.model.train(was_training)
        return [c for c in results if c is not None]

    def _generate_batch(
        self,
        prompts: list[list[int]],
        cached: list[CachedPrefix],
        params: SamplingParams,
        noise: torch.Tensor | None,
    ) -> list[Completion]:
        n = len(prompts)
        # Identical prompts (a group's rollouts of one task, on their first turn) are prefilled
        # once: `source[row]` is the distinct prompt a row copies its keys and values from.
        if self.share_identical_prompts:
            distinct, source = _first_occurrences([tuple(prompt) for prompt in prompts])
        else:
            distinct, source = list(range(n)), list(range(n))
        shared = [0 if distinct[source[row]] == row else len(prompts[row]) - cached[row].length
                  for row in range(n)]
        self.shared_prompt_tokens += sum(shared)
        u = len(distinct)
        # Row layout: [padding | cached prefix | padding | new tokens]. The cache holds the
        # first part, the prefill pass feeds the second; with no cached rows it is plain
        # left padding.
        past = max(cached[row].length for row in distinct)
        new = [prompts[row][cached[row].length:] for row in distinct]
        width = max(len(tokens) for tokens in new)
        input_ids = torch.full((u, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((u, past + width), dtype=torch.long)
        for k, (row, tokens) in enumerate(zip(distinct, new)):
            length = cached[row].length
            input_ids[k, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
            attention_mask[k, past - length : past] = 1
            attention_mask[k, past + width - len(tokens) :] = 1
        input_ids = input_ids.to(self.device)
        attention_mask = attention_mask.to(self.device)
        # Positions count real tokens only, so a padded row sees the positions it would see
        # unpadded (padding gets position 0; it is masked anyway).
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
        next_position = torch.tensor([len(p) for p in prompts], device=self.device)

        cache = DynamicCache(config=self.model.config)
        if past:
            self.reused_prompt_tokens += sum(prefix.length for prefix in cached)
            stacked = _stack_prefixes([cached[row] for row in distinct], past, self.device)
            for layer, (keys, values) in enumerate(stacked):
                cache.update(keys, values, layer)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **cache_kwargs(self.model, cache),
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1, :].float()
        if u < n:  # every row gets the keys, values and next-token logits of its prompt
            index = torch.tensor(source, device=self.device)
            cache.batch_select_indices(index)
            attention_mask = attention_mask[index]
            logits = logits[index]

        tokens: list[list[int]] = [[] for _ in range(n)]
        logprobs: list[list[float]] = [[] for _ in range(n)]
        tops: list[list[list[float]]] = [[] for _ in range(n)]
        finish: list[FinishReason] = ["length"] * n
        stop_strings: list[str | None] = [None] * n
        # A stop string of b bytes lies within the last b tokens (every token is >= 1 byte).
        stop_window = max((len(s.encode("utf-8")) for s in params.stop), default=0)

        active = list(range(n))  # batch row -> index into `prompts`
        for step in range(params.max_new_tokens):
            uniforms = noise[active, step] if noise is not None else None
            next_tokens, chosen, top = _sample(logits, params, uniforms)
            next_list = next_tokens.tolist()
            chosen_list = chosen.tolist()
            top_list = top.tolist() if top is not None else None

            keep: list[int] = []
            ended: list[int] = []
            for j, row in enumerate(active):
                tokens[row].append(next_list[j])
                logprobs[row].append(chosen_list[j])
                if top_list is not None:
                    tops[row].append(top_list[j])
                if next_list[j] in self.eos_token_ids:
                    finish[row] = "eos"
                    ended.append(j)
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
                        ended.append(j)
                        continue
                keep.append(j)
            last = not keep or step == params.max_new_tokens - 1
            if self._prefixes is not None:  # inside prefix_cache(): keep what finished
                for j in ended + (keep if last else []):
                    self._remember(prompts[active[j]] + tokens[active[j]][:-1], cache, attention_mask, j)
            if last:
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
                **cache_kwargs(self.model, cache),
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
                prompt_cached_tokens=cached[row].length + shared[row],
            )
            for row in range(n)
        ]


def _first_occurrences(keys: list[tuple[int, ...]]) -> tuple[list[int], list[int]]:
    """The rows whose key appears first (in order), and for every row the index of its key's
    first row among them."""
    slot_of: dict[tuple[int, ...], int] = {}
    first: list[int] = []
    source: list[int] = []
    for row, key in enumerate(keys):
        if key not in slot_of:
            slot_of[key] = len(first)
            first.append(row)
        source.append(slot_of[key])
    return first, source


def _stack_prefixes(cached: list[CachedPrefix], past: int, device: torch.device) -> KV:
    """Per layer, the batch's cached keys and values [rows, heads, past, dim], left-padded."""
    template = next(prefix.pieces[0] for prefix in cached if prefix.length)
    stacked = []
    for layer, (keys0, values0) in enumerate(template):
        keys = keys0.new_zeros((len(cached), keys0.shape[0], past, keys0.shape[-1]), device=device)
        values = values0.new_zeros((len(cached), values0.shape[0], past, values0.shape[-1]), device=device)
        for row, prefix in enumerate(cached):
            start = past - prefix.length
            for piece in prefix.pieces:  # consecutive positions, from the first
                piece_keys, piece_values = piece[layer]
                end = start + piece_keys.shape[1]
                keys[row, :, start:end] = piece_keys
                values[row, :, start:end] = piece_values
                start = end
        stacked.append((keys, values))
    return stacked


def _row_uniforms(seeds: list[int | None], params: SamplingParams) -> torch.Tensor | None:
    """One uniform number per row and decoding step, drawn from that row's own seed (or fresh
    randomness): a row's completion depends on its seed and prompt only, not on the batch it
    shares. None for greedy decoding, which needs no noise."""
    if params.temperature == 0:
        return None
    noise = torch.empty((len(seeds), params.max_new_tokens), dtype=torch.float64)
    rng = torch.Generator()
    for row, seed in enumerate(seeds):
        if seed is None:
            rng.seed()
        else:
            rng.manual_seed(seed)
        noise[row] = torch.rand(params.max_new_tokens, generator=rng, dtype=torch.float64)
    return noise


def _sample(
    logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Sample one token per row of `logits` (float32, shape [batch, vocab]) by inverting each
    row's cumulative distribution at its uniform number (`uniforms`, shape [batch]).

    Returns the tokens, their log-probs under softmax(logits / temperature) (temperature 1 for
    greedy), and the top-k log-probs of that same distribution when asked for.
    """
    if params.temperature == 0:
        logp = torch.log_softmax(logits, dim=-1)
        tokens = logp.argmax(dim=-1)
    else:
        assert uniforms is not None, "sampling needs one uniform number per row"
        logp = torch.log_softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            # Nucleus: keep the most likely tokens until their mass reaches top_p (always at
            # least one), sample among them. The returned log-prob stays the untruncated one.
            sorted_logp, sorted_ids = logp.sort(dim=-1, descending=True)
            probs = sorted_logp.exp()
            mass_before = probs.cumsum(dim=-1) - probs
            probs = probs.masked_fill(mass_before >= params.top_p, 0.0)
            tokens = sorted_ids.gather(-1, _invert_cdf(probs, uniforms)[:, None]).squeeze(-1)
        else:
            tokens = _invert_cdf(logp.exp(), uniforms)
    chosen = logp.gather(-1, tokens[:, None]).squeeze(-1)
    top = logp.topk(params.top_logprobs, dim=-1).values if params.top_logprobs > 0 else None
    return tokens, chosen, top


def _invert_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Per row, the first index whose cumulative probability exceeds u * total: a draw from
    the (unnormalised) row distribution. A token of probability 0 is never chosen: its
    cumulative value equals its predecessor's, which the search skips."""
    cdf = probs.double().cumsum(dim=-1)
    targets = (uniforms.to(cdf.device) * cdf[:, -1])[:, None]
    index = torch.searchsorted(cdf, targets, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)
    # u * total can round up to total itself (about once in 2**53 draws): such a row falls back
    # to its last token with mass. Checked per row, so the common case costs one gather.
    empty = probs.gather(-1, index[:, None]).squeeze(-1) == 0
    if bool(empty.any()):
        last_with_mass = (probs[empty] > 0).long().cumsum(dim=-1).argmax(dim=-1)
        index[empty] = last_with_mass
    return index


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
