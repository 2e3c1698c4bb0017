"""The Generator protocol: how every sampling backend looks to the rest of agentrl.

Token ids in, token ids out, always (docs/generation.md). The rollout engine renders prompts with the
chat template itself and appends the exact sampled ids to the trajectory, so a backend never
re-tokenizes text, and the trainer learns from the very ids that were sampled.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from agentrl.types import Completion, SamplingParams


@runtime_checkable
class Generator(Protocol):
    """Samples one completion per prompt.

    Contract every backend keeps (tests check it for the in-process backend):

    - `generate` returns one `Completion` per prompt, in the order of `prompts`.
    - `token_ids` are the sampled ids; `logprobs[i]` is the log-prob of `token_ids[i]` under
      softmax(logits / temperature), before top-p truncation, so it equals what a fresh forward
      pass of the same weights gives at the same temperature. Temperature 0 means greedy
      decoding, and its log-probs are then taken at temperature 1.
    - `finish_reason` is "stop" when a stop string appeared (the stop string stays in the
      output and generation ends with the token that completed it; `stop_string` names it),
      "eos" when an end-of-sequence id was sampled (that id is the last of `token_ids`, with its
      log-prob, because the policy must learn to emit it), else "length" after
      `max_new_tokens` tokens.
    - `text` is the decoding of `token_ids` with special tokens kept. It ends with the stop
      string unless the last token reaches past it.
    - With `params.top_logprobs = k > 0`, `top_logprobs[i]` holds the k largest log-probs at
      position i (same distribution as `logprobs`), largest first.
    - Every completion draws its own noise. `seeds[i]` (one per prompt) fixes row i's: the
      same prompt and seed give the same completion, whatever else shares the batch. Without
      `seeds`, row i's seed is derived from `params.seed` and i (`agentrl.generation.seeding`),
      so identical prompts in one call still differ; with neither, the noise is fresh. The
      rollout engine passes one seed per (rollout, group, trajectory, turn), so no two turns,
      rows or branches of a run share noise and one run seed reproduces the run.

    Optional: a backend that fills `top_logprobs` says so with `returns_top_logprobs = True`;
    a strategy that measures entropy from them (ARPO's `entropy`) refuses any other backend
    before the rollout starts.

    Optional: a backend with a `prefix_cache()` context manager (HFGenerator) may reuse the
    keys and values of earlier prompt + completion pairs inside it; `RolloutEngine.run` opens
    one per run, while the weights cannot change. It then reports the reused prompt tokens in
    `Completion.prompt_cached_tokens`.
    """

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, seeds: list[int] | None = None
    ) -> list[Completion]:
        """Sample one completion for each prompt (a list of token ids)."""
        ...
