"""Atomic checkpoints: temp file + fsync + rename, newest-first loading with fallback.

A checkpoint is one torch file `ckpt-<iteration>.pt` holding tensors and plain data only, so
`torch.load(weights_only=True)` reads it (no pickle of arbitrary objects).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)
NAME = re.compile(r"^ckpt-(\d{8})\.pt$")


def save_checkpoint(directory: str | Path, iteration: int, state: dict, keep: int = 3) -> Path:
    """Write `state` as the checkpoint of `iteration`; keep the newest `keep` checkpoints."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"ckpt-{iteration:08d}.pt"
    fd, tmp = tempfile.mkstemp(prefix=".tmp-ckpt-", suffix=".partial", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        _check_loadable(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(directory)
    for old in list_checkpoints(directory)[keep:]:
        old.unlink(missing_ok=True)
    return target


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints, newest first (temp files never match the name pattern)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if NAME.match(p.name)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def load_latest(directory: str | Path) -> tuple[dict, Path] | None:
    """The newest checkpoint that loads; unreadable ones are skipped with a warning."""
    for path in list_checkpoints(directory):
        try:
            return torch.load(path, weights_only=True, map_location="cpu"), path
        except Exception as exc:  # a truncated or corrupt file: fall back to the previous one
            log.warning("checkpoint %s is unreadable (%s); falling back to the previous one", path, exc)
    return None


def _check_loadable(path: str) -> None:
    """Refuse state that `torch.load(weights_only=True)` cannot read back (custom objects)."""
    try:
        torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise ValueError(f"checkpoint state is not loadable with weights_only=True: {exc}") from None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
