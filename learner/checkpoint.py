"""Atomic checkpoints: temp file + fsync + rename, newest-first loading with fallback.

A checkpoint is one torch file `ckpt-<iteration>.pt` holding tensors and plain data only, so
`torch.load(weights_only=True)` reads it (no pickle of arbitrary objects). Its sha256 is recorded in the
MLflow run when it is logged (learner/tracking.py); a resume loads only bytes that match it (`load_newest`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import re
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)
NAME = re.compile(r"^ckpt-(\d{8})\.pt$")
TEMP_PREFIX, TEMP_SUFFIX = ".tmp-ckpt-", ".partial"


def save_checkpoint(directory: str | Path, iteration: int, state: dict, keep: int = 3) -> Path:
    """Write `state` as the checkpoint of `iteration`; keep the newest `keep` checkpoints."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"ckpt-{iteration:08d}.pt"
    started = time.time()
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=directory)
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
    remove_stale_temp_files(directory, older_than=started)
    return target


def remove_stale_temp_files(directory: Path, older_than: float) -> list[Path]:
    """Delete temp files a killed writer left behind: only our prefix, only those last written before
    `older_than` (so a write that started after ours is never touched)."""
    removed = []
    for path in directory.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        try:
            if path.stat().st_mtime < older_than:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            continue
    if removed:
        log.info("removed %d stale checkpoint temp file(s) in %s", len(removed), directory)
    return removed


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints, newest first (temp files never match the name pattern)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if NAME.match(p.name)]
    return sorted(found, key=lambda p: p.name, reverse=True)


class CheckpointIntegrityError(ValueError):
    """A checkpoint that does not match the sha256 recorded when it was saved, or none that can be verified."""


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (what the run records for a checkpoint)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class LoadedCheckpoint:
    """The newest readable checkpoint, the newer ones that had to be skipped (path, reason), and the newer ones
    passed over because no sha256 was recorded for them (verified loads only)."""

    state: dict
    path: Path
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    unverified: list[Path] = field(default_factory=list)


def load_newest(directory: str | Path, digests: Mapping[str, str] | None = None,
                recorded_in: str = "the run") -> LoadedCheckpoint | None:
    """The newest checkpoint that loads; unreadable ones are skipped with a warning and reported.

    With ``digests`` (file name -> the sha256 ``recorded_in`` names, taken when it was saved) only bytes that
    match are loaded: a checkpoint without a recorded digest is passed over (reported); one that no longer
    matches raises :class:`CheckpointIntegrityError`, unless it does not load anyway (a torn file: skipped as
    before); and when only unverified ones were left, :class:`CheckpointIntegrityError` too.
    """
    skipped: list[tuple[Path, str]] = []
    unverified: list[Path] = []
    for path in list_checkpoints(directory):
        try:  # weights_only parses tensors and plain data, never code; an unverified file's state is dropped below
            blob = path.read_bytes()
            state = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
        except Exception as exc:  # a truncated or corrupt file: fall back to the previous one
            log.warning("checkpoint %s is unreadable (%s); falling back to the previous one", path, exc)
            skipped.append((path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
            continue
        if digests is None:
            return LoadedCheckpoint(state, path, skipped, unverified)
        expected, actual = digests.get(path.name), hashlib.sha256(blob).hexdigest()
        if expected is None:  # e.g. killed before the digest reached MLflow: an older verified one may follow
            unverified.append(path)
            continue
        if actual != expected:  # it loads, but it is not what was saved: an attack, not a crash
            raise CheckpointIntegrityError(
                f"checkpoint {path} (sha256 {actual}) does not match the sha256 recorded in {recorded_in} when it "
                f"was saved ({expected}): it changed after it was saved; resume refused")
        return LoadedCheckpoint(state, path, skipped, unverified)
    if unverified:
        raise CheckpointIntegrityError(
            f"{recorded_in} records no sha256 for checkpoint(s) {', '.join(p.name for p in unverified)} (saved by "
            "an older metafleet, or the digest never reached MLflow), so none of them can be verified; resume "
            "refused. Start a new run instead: fleet train CONFIG")
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


def rng_state() -> dict:
    """Every global RNG of this process as plain data (`weights_only=True` loads it): torch CPU, CUDA
    (one state per device, when present), numpy's global RNG and python's `random`."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": [s.clone() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.as_tensor(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": {"version": version, "state": list(internal), "gauss": gauss},
    }


def set_rng_state(state: dict) -> None:
    """Restore `rng_state()` output. CUDA states are restored only where this process sees the same
    number of CUDA devices (a CPU resume of a GPU run cannot replay the GPU's random stream)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    elif cuda:
        log.warning("checkpoint holds %d CUDA RNG state(s), this process sees %d CUDA device(s): not restored",
                    len(cuda), torch.cuda.device_count() if torch.cuda.is_available() else 0)
    np_state = state["numpy"]
    np.random.set_state({"bit_generator": np_state["bit_generator"], "has_gauss": np_state["has_gauss"],
                         "gauss": np_state["gauss"],
                         "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]}})
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
