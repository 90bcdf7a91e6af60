"""Joining a Ray cluster is bounded: an address where nothing answers is a clear error, not a hang.

(Ray's own `ray.init(address=...)` retries an unreachable GCS for ~15 minutes.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from workers.ray_connect import CONNECT_TIMEOUT_ENV, RayConnectError, connect_timeout_s, init_ray, wait_for_cluster

REPO_ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_init_ray_gives_up_on_an_address_where_nothing_listens(monkeypatch):
    import ray

    address = f"127.0.0.1:{_free_port()}"
    monkeypatch.setenv(CONNECT_TIMEOUT_ENV, "1.5")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # this process may hold the session's Ray
    started = time.monotonic()
    with pytest.raises(RayConnectError) as raised:
        init_ray(address=address)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 8.0, elapsed  # the bound plus slack for a loaded machine
    message = str(raised.value)
    assert f"cannot connect to the Ray cluster at {address!r}" in message and "within 1.5 s" in message, message
    assert "nothing answers" in message and CONNECT_TIMEOUT_ENV in message, message
    assert isinstance(raised.value, ConnectionError) and raised.value.address == address


def test_waits_for_a_cluster_that_comes_up_within_the_timeout():
    """A head that opens its port late (still starting) is waited for, not refused at once."""
    port = _free_port()
    server = socket.socket()
    opened = threading.Timer(0.8, lambda: (server.bind(("127.0.0.1", port)), server.listen()))
    opened.start()
    try:
        started = time.monotonic()
        wait_for_cluster(f"ray://127.0.0.1:{port}", timeout_s=10.0)
        assert 0.7 <= time.monotonic() - started < 5.0
    finally:
        opened.join()
        server.close()


@pytest.mark.parametrize(("address", "reason"), [
    ("ray://127.0.0.1", "expected ray://HOST:PORT"),
    ("not an address", "Invalid address format"),
    ("http://127.0.0.1:8265", "a dashboard address"),
])
def test_an_address_that_names_no_cluster_is_refused(address, reason):
    with pytest.raises(RayConnectError, match=reason):
        wait_for_cluster(address, timeout_s=1.0)


@pytest.mark.parametrize("value", ["soon", "0", "-3", "inf", "nan"])
def test_a_bad_timeout_setting_is_named(value, monkeypatch):
    monkeypatch.setenv(CONNECT_TIMEOUT_ENV, value)
    with pytest.raises(RayConnectError, match=f"{CONNECT_TIMEOUT_ENV}={value!r} is not a number of seconds > 0"):
        connect_timeout_s()


def test_the_timeout_defaults_and_is_configurable(monkeypatch):
    monkeypatch.delenv(CONNECT_TIMEOUT_ENV, raising=False)
    assert connect_timeout_s() == 30.0
    monkeypatch.setenv(CONNECT_TIMEOUT_ENV, "7.5")
    assert connect_timeout_s() == 7.5


@pytest.mark.integration
def test_fleet_train_exits_2_before_anything_starts(tmp_path):
    """`fleet train` with an unreachable RAY_ADDRESS: exit 2 naming the address, no MLflow run opened."""
    address = f"127.0.0.1:{_free_port()}"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "RAY_ADDRESS": address, CONNECT_TIMEOUT_ENV: "2", "MLFLOW_TRACKING_URI": uri,
           "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "metafleet", "train", str(REPO_ROOT / "configs/smoke.yaml"),
                           "--set", "workers.backend=ray"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=180, check=False)
    elapsed = time.monotonic() - started
    assert done.returncode == 2, f"exit {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert f"cannot connect to the Ray cluster at {address!r}" in done.stderr and "within 2 s" in done.stderr
    assert elapsed < 90, f"took {elapsed:.0f}s"  # process start-up + imports + the 2 s bound, not Ray's ~15 min
    if (tmp_path / "mlflow.db").exists():
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert not runs, [r.info.run_id for r in runs]
