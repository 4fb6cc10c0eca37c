"""A progress bar over `docker build`'s steps, with the build log scrolling above it."""

from __future__ import annotations

import re
import sys

_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)")


class BuildProgress:
    """Called with each build log line. On a terminal: a bar by Dockerfile step; else plain lines.

    Use as a context manager; the bar is removed when the build ends.
    """

    def __init__(self, *, interactive: bool | None = None) -> None:
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self._progress = None
        self._bar = None

    def __enter__(self) -> BuildProgress:
        if self.interactive:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("building"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, line: str) -> None:
        if not line.strip():
            return
        step = _STEP.match(line)
        if self._progress is None:
            print(line, file=sys.stderr, flush=True)
            return
        if step:
            done, total, instruction = int(step[1]) - 1, int(step[2]), step[3]
            if self._bar is None:
                self._bar = self._progress.add_task(instruction[:60], total=total)
            self._progress.update(self._bar, completed=done, description=instruction[:60])
        self._progress.console.print(line, markup=False, highlight=False)


class CountProgress:
    """A bar counting finished items (e.g. submitted jobs) on a terminal; else a line per 10%."""

    def __init__(self, total: int, what: str, *, interactive: bool | None = None) -> None:
        self.total = total
        self.what = what
        self.done = 0
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self._progress = None
        self._bar = None
        self._said = 0

    def __enter__(self) -> CountProgress:
        if self.interactive and self.total:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn(self.what),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
            self._bar = self._progress.add_task(self.what, total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._progress is not None:
            self._progress.update(self._bar, completed=self.done)
            return
        tenth = self.done * 10 // max(self.total, 1)
        if tenth > self._said:
            self._said = tenth
            print(f"{self.what}: {self.done}/{self.total}", file=sys.stderr, flush=True)
