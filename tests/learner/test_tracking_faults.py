"""The Tracker survives MLflow outages: points are buffered (bounded), retried, delivered once it is back.

Fast tests inject the fault by making the client's delivery call raise; the slow one stops a real
`mlflow server` mid-run and starts it again on the same port and store.
"""

import logging
import socket
import time

import pytest
from mlflow.tracking import MlflowClient

from learner.tracking import Tracker
from tests.mlflow_server import start_server, stop_server


class Outage:
    """Makes one client method raise like an unreachable server while `down` is set."""

    def __init__(self, monkeypatch, tracker, method="log_batch"):
        self.down, self.calls = True, 0
        real = getattr(tracker.client, method)

        def flaky(*args, **kwargs):
            self.calls += 1
            if self.down:
                raise ConnectionError("connection refused (injected)")
            return real(*args, **kwargs)

        monkeypatch.setattr(tracker.client, method, flaky)


def steps(uri, run_id, key="loss"):
    return [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key)]


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """One sqlite store for the module (creating one costs seconds); each test has its own run."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # the default artifact root (./mlruns) lands here
        yield f"sqlite:///{root}/mlflow.db"


@pytest.fixture
def tracker(mlflow_uri):
    tracker = Tracker(mlflow_uri, "faults", retry_interval=0.0)
    yield tracker
    tracker.close()


def test_metrics_logged_during_an_outage_are_delivered_later(tracker, mlflow_uri, monkeypatch, caplog):
    tracker.log_metrics({"loss": 1.0}, step=1)
    outage = Outage(monkeypatch, tracker)
    with caplog.at_level(logging.WARNING, logger="learner.tracking"):
        for step in range(2, 7):
            tracker.log_metrics({"loss": float(step), "bad key!": 0.0}, step=step)  # must not raise
        assert tracker.pending == 10 and tracker.buffered == 10 and tracker.flush_failures == 5
        assert caplog.text.count("is unreachable") == 1  # one warning per outage, not per call
        outage.down = False
        tracker.log_metrics({"loss": 7.0}, step=7)
    assert tracker.pending == 0 and tracker.dropped == 0
    assert "reachable again" in caplog.text
    assert steps(mlflow_uri, tracker.run_id) == [(s, float(s)) for s in range(1, 8)]
    assert [m.step for m in MlflowClient(mlflow_uri).get_metric_history(tracker.run_id, "bad key_")] == [2, 3, 4, 5, 6]


def test_buffer_is_bounded_and_drops_the_oldest(mlflow_uri, monkeypatch):
    tracker = Tracker(mlflow_uri, "faults", max_buffered=5, retry_interval=0.0)
    outage = Outage(monkeypatch, tracker)
    for step in range(1, 9):
        tracker.log_metrics({"loss": float(step)}, step=step)
    assert tracker.pending == 5 and tracker.dropped == 3 and tracker.buffered == 8
    outage.down = False
    tracker.close()  # close flushes
    assert [s for s, _ in steps(mlflow_uri, tracker.run_id)] == [4, 5, 6, 7, 8]
    assert MlflowClient(mlflow_uri).get_run(tracker.run_id).info.status == "FINISHED"


def test_retry_waits_for_the_retry_interval(mlflow_uri, monkeypatch):
    """A slow, unreachable server must not be hit by every call: one try per interval."""
    tracker = Tracker(mlflow_uri, "faults", retry_interval=60.0)
    outage = Outage(monkeypatch, tracker)
    for step in range(1, 20):
        tracker.log_metrics({"loss": float(step)}, step=step)
    assert outage.calls == 1 and tracker.pending == 19
    outage.down = False
    assert tracker.flush() and tracker.pending == 0  # flush (and close) always try
    tracker.close()


def test_checkpoint_artifacts_are_retried(tracker, mlflow_uri, monkeypatch, tmp_path):
    outage = Outage(monkeypatch, tracker, "log_artifact")
    ckpt = tmp_path / "ckpt-00000001.pt"
    ckpt.write_bytes(b"state")
    tracker.log_artifact(ckpt, "checkpoints")  # must not raise
    assert tracker.flush_failures == 1
    outage.down = False
    assert tracker.flush()
    assert [a.path for a in MlflowClient(mlflow_uri).list_artifacts(tracker.run_id, "checkpoints")] == [
        "checkpoints/ckpt-00000001.pt"]


def test_resume_does_not_duplicate_redone_steps(mlflow_uri):
    """A killed job logged steps 1..4 but checkpointed at 2: the resumed job redoes 3 and 4."""
    first = Tracker(mlflow_uri, "faults")
    for step in range(1, 5):
        first.log_metrics({"loss": float(step)}, step=step)
    first.close("KILLED")
    resumed = Tracker(mlflow_uri, "faults", run_id=first.run_id)
    resumed.mark_resumed(2)
    for step in range(3, 7):
        resumed.log_metrics({"loss": 100.0 + step}, step=step)
    resumed.close()
    history = steps(mlflow_uri, first.run_id)
    assert [s for s, _ in history] == [1, 2, 3, 4, 5, 6]
    assert dict(history)[4] == 4.0 and dict(history)[5] == 105.0  # first write wins for re-done steps
    run = MlflowClient(mlflow_uri).get_run(first.run_id)
    assert run.data.tags["resumed_from_iteration"] == "2" and run.data.metrics["resumed_from_iteration"] == 2.0


# ---- a real tracking server that goes away mid-run --------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.integration
def test_real_server_outage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(port, tmp_path)
    try:
        tracker = Tracker(uri, "outage", retry_interval=0.0)
        for step in range(1, 4):
            tracker.log_metrics({"loss": float(step)}, step=step)
        assert tracker.pending == 0
        stop_server(server)
        for step in range(4, 14):
            started = time.monotonic()
            tracker.log_metrics({"loss": float(step)}, step=step)  # must neither raise nor block
            assert time.monotonic() - started < 2.0
        assert tracker.pending == 10 and tracker.flush_failures == 10
        server = start_server(port, tmp_path)  # same port, same store
        tracker.close()
        client = MlflowClient(uri)
        assert [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "loss")] == [
            (s, float(s)) for s in range(1, 14)]
        assert client.get_run(tracker.run_id).info.status == "FINISHED"
    finally:
        stop_server(server)
