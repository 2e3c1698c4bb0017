"""Looking at runs: `agentrl view RUN_DIR` prints a run directory's summary (`view_run`)."""

from agentrl.viewer.run_summary import view_run

__all__ = ["view_run"]
