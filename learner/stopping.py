"""Graceful stop of a training driver on SIGINT (Ctrl-C) and SIGTERM (`ray job stop`, a scheduler, `kill`).

The first signal asks the loop to stop after the iteration in progress: the loop checkpoints the last finished
iteration, marks the MLflow run KILLED and raises `Stopped`; the front door prints the resume command and exits
130 (SIGINT) or 143 (SIGTERM). A second signal exits at once with the same code.

    with StopOnSignal() as stop:
        while not stop.requested and ...:
            iterate()

Installed after `ray.init`, so Python's handler replaces the one Ray's core worker sets (whose SIGTERM ends the
driver with a C++ stack dump).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


class Stopped(Exception):
    """Training stopped by a signal after a clean checkpoint; `run_id` continues with `fleet train --resume`."""

    def __init__(self, message: str, signum: int = signal.SIGINT, run_id: str = "", iteration: int = 0):
        super().__init__(message)
        self.signum, self.run_id, self.iteration = int(signum), run_id, iteration

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)


class StopOnSignal:
    """Records the first SIGINT/SIGTERM in `requested`; the second exits the process at once.

    Only the main thread can install handlers: elsewhere (e.g. a test calling the loop from a thread) it
    installs nothing and `requested` stays None. Previous handlers are restored on exit.
    """

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            print(f"\nmetafleet: {name} again: stopping now, without a checkpoint", file=sys.stderr, flush=True)
            os._exit(exit_code(signum))
        self.requested = signum
        print(f"\nmetafleet: {name} received: stopping after the current iteration (checkpoint, then exit); "
              "send it again to stop at once", file=sys.stderr, flush=True)
