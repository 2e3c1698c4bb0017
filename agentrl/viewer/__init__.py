"""Looking at runs.

`agentrl view RUN_DIR` prints a run directory's summary (`view_run`); `agentrl view RUN_DIR
--tree` draws one group's rollouts as the tree they branched into (`view_tree`, built by
`group_tree` from the lines `read_group` picks out of trajectories.jsonl).
"""

from __future__ import annotations

from typing import Any

from agentrl.viewer.tree_view import group_tree, read_group, view_tree

__all__ = ["group_tree", "read_group", "view_run", "view_tree"]


def __getattr__(name: str) -> Any:
    # The run summary reads metrics through the training package, which imports torch (seconds);
    # loaded on first use, so that drawing a tree stays instant.
    if name == "view_run":
        from agentrl.viewer.run_summary import view_run

        return view_run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
