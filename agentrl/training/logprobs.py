"""Per-token log-probs (and entropy) of given sequences under a causal LM.

Position i holds log p(token_i | tokens_<i) at the sampling temperature, aligned with the
trajectory's `logprobs` and `loss_mask`; position 0 has no context and holds 0.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from agentrl.algorithms import entropy_from_logits
from agentrl.training.shared_prefix import PrefixPlan, shared_prefix_logits, supports_shared_prefix

logger = logging.getLogger(__name__)
_warned_models: set[type] = set()


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    prefix_plan: PrefixPlan | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [B, T] of `input_ids` under `model` (and per-token entropy [B, T] if asked).

    `temperature` must be the one the behaviour policy sampled at (0 means greedy; its
    log-probs are taken at temperature 1), otherwise importance ratios are biased.
    The entropy carries gradients only with `entropy_grad=True` (an entropy bonus); as a mere
    metric it is computed without autograd, which keeps its softmax out of the graph.
    With a `prefix_plan` (`plan_shared_prefixes`), every token the rows share is forwarded once
    (`shared_prefix_logits`); the result is the same up to rounding. A model that cannot run
    the shared forward (`supports_shared_prefix`) gets a plain forward instead, with a warning
    the first time.
    """
    if prefix_plan is not None and not supports_shared_prefix(model):
        if type(model) not in _warned_models:
            _warned_models.add(type(model))
            logger.warning("%s cannot run the shared-prefix forward (it needs a Hugging Face causal LM taking "
                           "a DynamicCache and position_ids, without sliding-window attention); its update "
                           "forwards every sequence whole. Set train.shared_prefix=false to silence this.",
                           type(model).__name__)
        prefix_plan = None
    if prefix_plan is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    else:
        logits = shared_prefix_logits(model, input_ids, attention_mask, prefix_plan)
    logits = logits[:, :-1].float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    targets = input_ids[:, 1:].unsqueeze(-1)
    # log_softmax gathered at the targets, without materialising the whole log-softmax.
    picked = logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    logprobs = F.pad(picked, (1, 0))
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = F.pad(entropy_from_logits(logits if entropy_grad else logits.detach()), (1, 0))
    return logprobs, entropy
