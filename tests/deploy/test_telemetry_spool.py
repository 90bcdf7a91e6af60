"""The robot's telemetry spool: append-only, checksummed, a torn last line skipped and never merged."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy.telemetry_spool import SPOOL_FILE, Spool, percentile, validate

ROOT = Path(__file__).resolve().parents[2]


def record(**over) -> dict:
    base = {"robot": "kuka-0", "model": "m", "version": "1", "digest": "d" * 64, "family": "reach",
            "time": 1.0, "return": -1.5, "length": 12, "success": False, "safe_stops": 0, "clipped": 3,
            "rate_limited": 1, "latency_p50_ms": 0.1, "latency_p99_ms": 0.2}
    return {**base, **over}


def test_append_read_and_indices_per_robot_and_version(tmp_path):
    spool = Spool(tmp_path)
    ids = [spool.append(record()), spool.append(record(version="2")), spool.append(record())]
    assert all(ids) and len(set(ids)) == 3
    read = spool.read()
    assert [(e["record"]["version"], e["record"]["index"]) for e in read.entries] == [("1", 0), ("2", 0), ("1", 1)]
    assert read.skipped == 0 and read.end == (tmp_path / SPOOL_FILE).stat().st_size
    assert Spool(tmp_path).append(record()) and Spool(tmp_path).read().entries[-1]["record"]["index"] == 2  # reopened


def test_a_torn_last_line_is_skipped_counted_and_never_merged(tmp_path):
    spool = Spool(tmp_path)
    spool.append(record())
    spool.append(record(**{"return": 2.0}))
    with open(tmp_path / SPOOL_FILE, "ab") as f:  # what a kill -9 mid-write leaves: half a line, no newline
        f.write(b'{"id": "abc", "sha256": "12', )
    read = spool.read()
    assert len(read.entries) == 2 and read.skipped == 0  # an unfinished line is not read yet
    spool.append(record(**{"return": 3.0}))  # the next writer ends the torn line first
    read = Spool(tmp_path).read()
    assert [e["record"]["return"] for e in read.entries] == [-1.5, 2.0, 3.0] and read.skipped == 1


def test_a_corrupted_line_fails_its_checksum(tmp_path):
    spool = Spool(tmp_path)
    spool.append(record())
    spool.append(record())
    path = tmp_path / SPOOL_FILE
    lines = path.read_text().splitlines()
    lines[0] = lines[0].replace('"length": 12', '"length": 13')
    path.write_text("\n".join(lines) + "\n")
    read = spool.read()
    assert len(read.entries) == 1 and read.skipped == 1


@pytest.mark.parametrize("bad", [{"return": float("nan")}, {"robot": ""}, {"length": -1}, {"success": "yes"},
                                 {"clipped": 1.5}, {"version": None}, {"latency_p99_ms": "fast"}])
def test_invalid_records_are_rejected_and_counted(tmp_path, bad):
    spool = Spool(tmp_path)
    assert spool.append(record(**bad)) is None and spool.rejected == 1
    assert spool.append(record()) is not None
    assert len(spool.read().entries) == 1 and spool.read().entries[0]["record"]["index"] == 0
    assert validate(record(**bad, index=0)) is not None


def test_delivered_offset(tmp_path):
    spool = Spool(tmp_path)
    spool.append(record())
    first = spool.read().end
    spool.mark_delivered(first)
    spool.append(record())
    pending = Spool(tmp_path).pending()
    assert len(pending.entries) == 1 and pending.entries[0]["record"]["index"] == 1


def test_kill_9_mid_writing_loses_at_most_the_record_being_written(tmp_path):
    writer = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "from deploy.telemetry_spool import Spool\n"
              "from tests.deploy.test_telemetry_spool import record\n"
              f"spool = Spool({str(tmp_path)!r})\n"
              "i = 0\n"
              "while True:\n"
              "    spool.append(record(**{'return': float(i)}))\n"
              "    print(i, flush=True)\n"
              "    i += 1\n")
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    confirmed = -1
    deadline = time.monotonic() + 30
    while confirmed < 50 and time.monotonic() < deadline:
        confirmed = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    read = Spool(tmp_path).read()
    returns = [e["record"]["return"] for e in read.entries]
    assert returns == [float(i) for i in range(len(returns))]  # in order, none corrupted
    assert len(returns) >= confirmed + 1  # every append that returned is there
    assert read.skipped <= 1
    assert all(json.loads(line) for line in (tmp_path / SPOOL_FILE).read_text().splitlines()[:-1])


def test_percentile():
    assert percentile([], 50) == 0.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(101)], 99) == pytest.approx(99.0)
