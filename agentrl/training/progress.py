"""What a training run shows while it works: a live display on a terminal, plain lines elsewhere.

rich draws its progress bars and spinners only on a terminal. With stdout redirected
(`make demo > log`, a batch job, CI) it would print nothing until a stage ends, which for the
demo is a quarter of an hour. There, each stage prints one line when it starts, and a progress
task prints one line per step worth reporting:

    Evaluating on 200 held-out tasks (before_rl)
    RL 1/40  reward -0.375  success 0.12  1432 tok/s  elapsed 0:00:21

`progress(console)` and `status(console, text)` pick the display from the console (a terminal
or a notebook gets rich's); both are used like rich's `Progress` and `Console.status`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, ContextManager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def progress(console: Console) -> Progress | LineProgress:
    """A progress display for `console`: rich's bar on a terminal, `LineProgress` elsewhere.

    Tasks take a `stats` field (shown after the count); on the line display a task prints a
    line every `line_every` steps (a field too; 1 by default) and at its last step.
    """
    if not _live(console):
        return LineProgress(console)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[stats]}"), console=console,
                    transient=False)


def status(console: Console, text: str) -> ContextManager[Any]:
    """A spinner with `text` on a terminal; elsewhere `text` printed once as a line."""
    if _live(console):
        return console.status(text)
    console.print(text, highlight=False, soft_wrap=True)
    return contextlib.nullcontext()


def _live(console: Console) -> bool:
    """Whether rich can redraw in place: a terminal, or a Jupyter notebook's output cell."""
    return console.is_terminal or console.is_jupyter


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float
    stats: str
    line_every: int
    started: float = field(default_factory=time.monotonic)


class LineProgress:
    """The part of rich's `Progress` a training run uses, printing one plain line per step."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._tasks: list[_Task] = []

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, completed: float = 0,
                 stats: str = "", line_every: int = 1, **fields: Any) -> int:
        self._tasks.append(_Task(description, total, completed, stats, max(1, line_every)))
        return len(self._tasks) - 1

    def update(self, task_id: int, *, completed: float | None = None, total: float | None = None,
               stats: str | None = None, **fields: Any) -> None:
        task = self._tasks[task_id]
        if total is not None:
            task.total = total
        if stats is not None:
            task.stats = stats
        if completed is None or completed == task.completed:
            return
        task.completed = completed
        if completed % task.line_every == 0 or completed == task.total:
            self.console.print(self._line(task), highlight=False, soft_wrap=True)

    @staticmethod
    def _line(task: _Task) -> str:
        count = f"{task.completed:g}" if task.total is None else f"{task.completed:g}/{task.total:g}"
        elapsed = int(time.monotonic() - task.started)
        hours, rest = divmod(elapsed, 3600)
        clock = f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
        return "  ".join(part for part in (f"{task.description} {count}", task.stats, f"elapsed {clock}") if part)
