"""Advantage estimators, losses and group filters: pure math, conventions in docs/algorithms.md.

Everything here works on numpy arrays (advantages, filters) or torch tensors (losses) and
imports nothing of agentrl except `agentrl.types`, so it can be tested and reused on its own.
"""

from __future__ import annotations

from agentrl.algorithms.advantages import grpo_advantages
from agentrl.algorithms.arpo import arpo_branch_probability, arpo_hard_advantages, arpo_step_entropy
from agentrl.algorithms.broadcast import broadcast_to_tokens
from agentrl.algorithms.estimators import ADVANTAGE_ESTIMATORS, register_advantage, token_advantages
from agentrl.algorithms.filters import dynamic_sampling_filter, kept_groups, top_std_filter
from agentrl.algorithms.gigpo import cluster_anchors, discounted_returns, gigpo_advantages
from agentrl.algorithms.tree_grpo import tree_grpo_advantages
from agentrl.algorithms.ufo import normalize_answer, ufo_return

# The losses need torch, which takes seconds to import; they load on first use, so the numpy
# math here (and what uses it without training, such as TryAgain's UFO return in an env that
# `agentrl env check` runs) imports without torch.
_TORCH_LOSSES = ("aggregate", "entropy_from_logits", "kl_penalty", "policy_loss")


def __getattr__(name: str):
    if name in _TORCH_LOSSES:
        from agentrl.algorithms import losses

        return getattr(losses, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "aggregate",
    "arpo_branch_probability",
    "arpo_hard_advantages",
    "arpo_step_entropy",
    "broadcast_to_tokens",
    "cluster_anchors",
    "discounted_returns",
    "dynamic_sampling_filter",
    "entropy_from_logits",
    "gigpo_advantages",
    "grpo_advantages",
    "kept_groups",
    "kl_penalty",
    "normalize_answer",
    "policy_loss",
    "register_advantage",
    "token_advantages",
    "top_std_filter",
    "tree_grpo_advantages",
    "ufo_return",
]
