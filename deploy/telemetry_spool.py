"""The robot's telemetry spool: one record per episode, appended to a local file before anything is sent.

A robot without network keeps its telemetry here; :mod:`deploy.telemetry` delivers it to MLflow when the
tracking server answers. Standard library only: it runs on the robot, beside the runtime.

Format: ``episodes.jsonl`` in the spool directory, one JSON object a line, ``{"id", "sha256", "record"}``, where
``sha256`` is taken over the record's canonical JSON. Each line is written with one ``write`` and fsynced before
:meth:`Spool.append` returns, under an exclusive ``flock``. A kill -9 mid-write leaves at most one torn last line:
the next writer ends it with a newline first (so it never merges with the next record), and readers skip and
count any line that does not parse or whose checksum does not match. ``delivered`` holds the byte offset up to
which every line has been delivered; it is replaced atomically, and only after the delivery succeeded.

Each record carries ``index``: its episode's position among the spool's records of the same robot, model,
version and digest (the MLflow step), so a redelivered record lands on the same step and can be recognised.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

SPOOL_FILE = "episodes.jsonl"
OFFSET_FILE = "delivered"
DIR_ENV = "METAFLEET_TELEMETRY_DIR"
DEFAULT_DIR = Path("~/.metafleet/telemetry")

KEY_FIELDS = ("robot", "model", "version", "digest")
NUMBERS = ("return", "length", "safe_stops", "clipped", "rate_limited", "latency_p50_ms", "latency_p99_ms", "time")
COUNTS = ("length", "safe_stops", "clipped", "rate_limited")


def default_dir() -> Path:
    """``$METAFLEET_TELEMETRY_DIR``, else ``~/.metafleet/telemetry``."""
    return Path(os.environ.get(DIR_ENV) or DEFAULT_DIR).expanduser()


def validate(record) -> str | None:
    """Why ``record`` is not a valid episode record, or None when it is."""
    if not isinstance(record, dict):
        return f"a record is a JSON object, got {type(record).__name__}"
    for key in KEY_FIELDS:
        if not isinstance(record.get(key), str) or not record[key]:
            return f"{key!r} must be a non-empty string, got {record.get(key)!r}"
    for key in NUMBERS:
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return f"{key!r} must be a finite number, got {value!r}"
    for key in COUNTS:
        if record[key] < 0 or record[key] != int(record[key]):
            return f"{key!r} must be a count (an int >= 0), got {record[key]!r}"
    if record.get("success") is not None and not isinstance(record["success"], bool):
        return f"'success' must be true, false or null (the family defines none), got {record['success']!r}"
    index = record.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        return f"'index' must be an int >= 0, got {index!r}"
    return None


def checksum(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, allow_nan=False).encode()).hexdigest()


@dataclass
class ReadResult:
    """Valid entries (``{"id", "record", "end"}``: ``end`` = the byte offset after its line) from an offset, the
    lines skipped (torn, not JSON, checksum or validation failed) and the offset after the last complete line."""

    entries: list[dict] = field(default_factory=list)
    skipped: int = 0
    end: int = 0


class Spool:
    """An append-only spool of episode records in ``directory`` (created)."""

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory).expanduser() if directory is not None else default_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / SPOOL_FILE
        self.rejected = 0  # records refused by validate() in this process
        self._next: dict[tuple, int] | None = None

    @contextlib.contextmanager
    def _locked(self):
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def append(self, record: dict) -> str | None:
        """Give ``record`` its ``index``, validate it and append it durably; its id, or None (counted in
        ``rejected``) when it fails validation. Raises OSError when the spool cannot be written."""
        with self._locked():
            if self._next is None:
                self._next = {}
                for entry in self.read(0).entries:
                    key = tuple(entry["record"][k] for k in KEY_FIELDS)
                    self._next[key] = max(self._next.get(key, 0), entry["record"]["index"] + 1)
            key = tuple(record.get(k) for k in KEY_FIELDS) if isinstance(record, dict) else None
            if isinstance(record, dict):
                with contextlib.suppress(TypeError):  # an unhashable key field: validate() names it
                    record = {**record, "index": self._next.get(key, 0)}
            problem = validate(record)
            if problem is None:
                try:
                    line = json.dumps({"id": uuid.uuid4().hex, "sha256": checksum(record), "record": record},
                                      allow_nan=False)
                except (TypeError, ValueError) as exc:
                    problem = f"not JSON: {exc}"
            if problem is not None:
                self.rejected += 1
                return None
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn last line: end it, never extend it
                    os.write(fd, b"\n")
                os.write(fd, (line + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            self._next[key] = record["index"] + 1
            return json.loads(line)["id"]

    def read(self, offset: int = 0) -> ReadResult:
        """The complete lines from byte ``offset`` on (a last line without its newline is not complete yet)."""
        out = ReadResult(end=offset)
        try:
            with open(self.path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return out
        position = offset
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break  # being written, or torn: skipped once a newline ends it
            position += len(raw)
            out.end = position
            entry = _parse(raw)
            if entry is None:
                out.skipped += raw.strip() != b""
                continue
            out.entries.append({**entry, "end": position})
        return out

    def delivered(self) -> int:
        """The byte offset up to which every record has been delivered."""
        try:
            return int((self.directory / OFFSET_FILE).read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def mark_delivered(self, offset: int) -> None:
        """Record that everything before byte ``offset`` is delivered (atomic replace, fsynced)."""
        tmp = self.directory / f".{OFFSET_FILE}.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(str(offset))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.directory / OFFSET_FILE)

    def pending(self) -> ReadResult:
        """What is not delivered yet."""
        return self.read(self.delivered())


def _parse(raw: bytes) -> dict | None:
    try:
        entry = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
        return None
    record = entry.get("record")
    if validate(record) is not None or entry.get("sha256") != checksum(record):
        return None
    return {"id": entry["id"], "record": record}


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, linear between the closest ranks; 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
