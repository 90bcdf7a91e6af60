"""Progress reporting: a live bar on a TTY, plain log lines otherwise (Ray job logs)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """`update(i, text)` once per iteration; `line(text)` for messages that must stay."""

    def __init__(self, total: int, stream: TextIO | None = None, start: int = 0):
        self.total, self.stream = total, stream or sys.stdout
        self.tty = self.stream.isatty()
        self.started, self.start = time.monotonic(), start

    def update(self, done: int, text: str) -> None:
        elapsed = time.monotonic() - self.started
        rate = (done - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        if self.tty:
            width = 24
            filled = int(width * done / max(self.total, 1))
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r[{bar}] {done}/{self.total} {text} eta {eta:5.0f}s ")
        else:
            self.stream.write(f"iter {done}/{self.total} | {text} | {elapsed:.0f}s elapsed\n")
        self.stream.flush()

    def line(self, text: str) -> None:
        if self.tty:
            self.stream.write("\n")
        self.stream.write(text + "\n")
        self.stream.flush()
