"""The multi-turn driver: token-space chat templating, the round-based engine, strategies."""

from agentrl.rollout.chat import ChatTemplater, TemplateNotAppendSafe
from agentrl.rollout.context import BranchError, EpisodeRequest, RolloutContext
from agentrl.rollout.demonstrations import collect_demonstrations, oracle_policy
from agentrl.rollout.engine import RolloutEngine
from agentrl.rollout.entropy_strategy import EntropyStrategy, EntropyUnmeasurable, segment_entropy
from agentrl.rollout.episode import Episode
from agentrl.rollout.strategies import ChainStrategy, Strategy, make_strategy
from agentrl.rollout.tree_strategy import TreeStrategy

__all__ = [
    "BranchError",
    "ChainStrategy",
    "ChatTemplater",
    "EntropyStrategy",
    "EntropyUnmeasurable",
    "Episode",
    "EpisodeRequest",
    "RolloutContext",
    "RolloutEngine",
    "Strategy",
    "TemplateNotAppendSafe",
    "TreeStrategy",
    "collect_demonstrations",
    "make_strategy",
    "oracle_policy",
    "segment_entropy",
]
