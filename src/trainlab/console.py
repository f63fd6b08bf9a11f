"""What a run prints: a progress bar on a terminal, plain lines otherwise, nothing on non-zero ranks."""

from __future__ import annotations

import sys
from typing import Optional

from rich.console import Console as RichConsole
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Console:
    def __init__(self, enabled: bool = True, progress: str = "auto"):
        self.enabled = enabled
        self.is_tty = sys.stdout.isatty()
        self.show_bar = enabled and (progress == "bar" or (progress == "auto" and self.is_tty))
        self.quiet = progress == "none"
        # highlight=False: numbers in plain log lines should not be recoloured.
        self._rich = RichConsole(highlight=False, soft_wrap=True) if self.is_tty else None
        self._progress: Optional[Progress] = None
        self._task = None

    def print(self, text: str) -> None:
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.print(text, markup=False)
        else:
            print(text, flush=True)

    def info(self, text: str) -> None:
        self.print(text)

    def warn(self, text: str) -> None:
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.print(f"[bold yellow]⚠ {text}[/]", highlight=False)
        else:
            print(f"WARNING: {text}", file=sys.stderr, flush=True)

    def start_epoch(self, epoch: int, epochs: int, total: int, done: int = 0) -> None:
        if not self.show_bar:
            return
        self._progress = Progress(
            TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=self._rich, transient=True,
        )  # fmt: skip
        self._progress.start()
        self._task = self._progress.add_task("train", total=total, completed=done, info="")

    def advance(self, info: str = "") -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, info=info)

    def end_epoch(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def close(self) -> None:
        self.end_epoch()
