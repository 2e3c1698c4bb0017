"""Evaluation runs and metrics (pass@k, Succ@k, unique-answer ratio, mean turns) over any
generator backend."""

from agentrl.eval.metrics import self_correction_metrics, solved_turn
from agentrl.eval.pass_at_k import mean_pass_at_k, pass_at_k
from agentrl.eval.runner import evaluate, evaluate_recipe

__all__ = ["evaluate", "evaluate_recipe", "mean_pass_at_k", "pass_at_k", "self_correction_metrics",
           "solved_turn"]
