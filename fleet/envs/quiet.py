"""Silence pybullet's C-level prints ("pybullet build time", "argv[0]=") on file descriptor 1.

They bypass sys.stdout, so they would corrupt machine-readable output such as `fleet eval --json`.
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
    """Point fd 1 at /dev/null for the duration (a no-op if fd 1 cannot be duplicated)."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        _flush_c_stdio()  # C stdio buffers when fd 1 is a pipe: flush into /dev/null, not later
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
