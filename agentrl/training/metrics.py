"""Metric sinks: one JSON line per iteration in metrics.jsonl, and TensorBoard scalars.

The run directory's logs (metrics.jsonl, trajectories.jsonl and TensorBoard's event files) are
only ever appended to, so a checkpoint records their lengths (`log_lengths`) and resuming from
it cuts them back (`MetricsLogger.rewind`): the iterations that run again after a kill then
log their lines and scalars once.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from agentrl.training.durable import fsync_path

#: The run directory's JSON-lines logs.
JSON_LOGS = ("metrics.jsonl", "trajectories.jsonl")
TENSORBOARD_DIR = "tensorboard"
_EVENT_FILES = "events.out.tfevents.*"


class MetricsLogger:
    """Writes namespaced scalars (`reward/mean`, `policy/approx_kl`, ...) to JSONL and TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._tensorboard = tensorboard
        self._open()

    def _open(self) -> None:
        self._file = self.path.open("a", encoding="utf-8")
        self._tb = None
        if self._tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        clean = {k: _plain(v) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": step, **clean}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in clean.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def rewind(self, lengths: Mapping[str, int]) -> None:
        """Cut the run's logs back to `lengths` (see `rewind_logs`); this logger then goes on
        appending, to a new TensorBoard event file."""
        self.close()
        rewind_logs(self.run_dir, lengths)
        self._open()


class DiscardingLogger:
    """The logger of ranks other than 0 in a run over several ranks: rank 0 alone writes the run
    directory's logs (with the metrics of every rank combined), the others drop theirs."""

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass

    def rewind(self, lengths: Mapping[str, int]) -> None:
        pass


def log_lengths(run_dir: Path) -> dict[str, int]:
    """The byte length of each log of the run directory now, by path relative to it, after
    flushing them to disk (so that lengths a checkpoint records are on disk too)."""
    run_dir = Path(run_dir)
    paths = [run_dir / name for name in JSON_LOGS]
    paths += sorted((run_dir / TENSORBOARD_DIR).glob(_EVENT_FILES))
    lengths = {}
    for path in paths:
        if path.is_file():
            fsync_path(path)
            lengths[path.relative_to(run_dir).as_posix()] = path.stat().st_size
    return lengths


def rewind_logs(run_dir: Path, lengths: Mapping[str, int]) -> None:
    """Cut the run's logs back to `lengths` (from `log_lengths`): what was appended since goes,
    half a line cut by a kill included, and so do logs begun since (an event file of a run that
    was killed before its next checkpoint)."""
    run_dir = Path(run_dir)
    for name in JSON_LOGS:
        path = run_dir / name
        if path.is_file() and path.stat().st_size > lengths.get(name, 0):
            os.truncate(path, lengths.get(name, 0))
    for path in (run_dir / TENSORBOARD_DIR).glob(_EVENT_FILES):
        name = path.relative_to(run_dir).as_posix()
        if name not in lengths:
            path.unlink()
        elif path.stat().st_size > lengths[name]:
            os.truncate(path, lengths[name])


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The lines of a run's metrics.jsonl. A last line that a kill cut short is left out (the
    run's next `--resume` removes it from the file)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    text = path.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines) and not text.endswith("\n"):
                break
            raise
    return rows


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value
