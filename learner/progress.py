"""Progress reporting: a rich progress bar on a TTY (iteration, the iteration's returns, success and env steps/s,
elapsed, ETA), plain log lines otherwise (Ray job logs, pipes)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """`update(i, text)` once per iteration; `line(text)` for messages that must stay; `close()` at the end (the
    bar also closes itself on the last iteration)."""

    def __init__(self, total: int, stream: TextIO | None = None, start: int = 0):
        self.total, self.stream = total, stream or sys.stdout
        self.tty = self.stream.isatty()
        self.started, self.start = time.monotonic(), start
        self._bar = None
        self._task = None

    def _live(self):
        if self._bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(TextColumn("iter"), MofNCompleteColumn(), BarColumn(bar_width=24),
                            TextColumn("{task.fields[text]}"), TimeElapsedColumn(), TextColumn("eta"),
                            TimeRemainingColumn(), console=Console(file=self.stream))
            self._task = self._bar.add_task("train", total=self.total, completed=self.start, text="")
            self._bar.start()
        return self._bar

    def update(self, done: int, text: str) -> None:
        if self.tty:
            self._live().update(self._task, completed=done, text=text)
            if done >= self.total:
                self.close()
            return
        elapsed = time.monotonic() - self.started
        self.stream.write(f"iter {done}/{self.total} | {text} | {elapsed:.0f}s elapsed\n")
        self.stream.flush()

    def line(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
            return
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
