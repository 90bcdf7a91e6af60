"""Silence pybullet's C-level prints ("pybullet build time", "argv[0]=") on file descriptors 1 and 2.

They bypass sys.stdout and sys.stderr, so they would corrupt machine-readable output such as `fleet eval --json`
and put a banner in every Ray worker's log (this pybullet build prints its build time on stderr, the rest on
stdout). Only C-level writes inside the block are lost; Python exceptions raised in it propagate as usual.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

_LIBC = ctypes.CDLL(None)


def _flush_c_stdio() -> None:
    with contextlib.suppress(AttributeError, OSError):
        _LIBC.fflush(None)


@contextlib.contextmanager
def quiet_stdout():
    """Point fds 1 and 2 at /dev/null for the duration (a no-op if they cannot be duplicated)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        _flush_c_stdio()  # C stdio buffers when fd 1 is a pipe: flush into /dev/null, not later
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)
