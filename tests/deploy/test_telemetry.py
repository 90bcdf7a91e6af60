"""`fleet run` reports every episode to MLflow (experiment `fleet`), offline first; `fleet status` shows it."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy.telemetry import EXPERIMENT, Delivery
from deploy.telemetry_spool import Spool
from metafleet.cli import main
from tests.mlflow_server import start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
TASK = ["--task", "goal=[0.6, 0.1, 0.4]"]


def fleet_runs(uri: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    return {(r.data.tags["robot"], r.data.tags["version"]): (r, client.get_metric_history(r.info.run_id, "length"))
            for r in client.search_runs([experiment.experiment_id])}


def test_two_robots_on_two_versions_report_to_mlflow_and_status(store, tmp_path, capsys):
    for version in ("1", "2"):
        assert main(["pull", f"models:/smoke/{version}", "--out", str(tmp_path / f"v{version}")]) == 0
    capsys.readouterr()
    spool = tmp_path / "spool"
    assert main(["run", str(tmp_path / "v1"), "--robot", "sim:kuka-0", "--episodes", "3", "--telemetry-dir",
                 str(spool), *TASK]) == 0
    capsys.readouterr()
    assert main(["run", str(tmp_path / "v2"), "--robot", "sim:kuka-1", "--episodes", "2", "--telemetry-dir",
                 str(spool), "--json", *TASK]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["telemetry"]["pending"] == 0 and out["telemetry"]["rejected"] == 0

    runs = fleet_runs(store)
    assert set(runs) == {("kuka-0", "1"), ("kuka-1", "2")}
    for (robot, version), (run, lengths) in runs.items():
        tags = run.data.tags
        assert tags["model"] == "smoke" and tags["robot"] == robot and tags["version"] == version
        assert len(tags["digest"]) == 64
        assert [m.step for m in lengths] == list(range(3 if robot == "kuka-0" else 2))
        assert {"return", "success", "interventions", "latency_p50_ms", "latency_p99_ms"} <= set(run.data.metrics)

    assert main(["status", "smoke", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    live = {(r["robot"], r["version"]): r["live"] for r in rows if r["live"]}
    assert set(live) == {("kuka-0", "1"), ("kuka-1", "2")}
    assert live[("kuka-0", "1")]["episodes_1h"] == 3 and live[("kuka-1", "2")]["episodes_1h"] == 2
    for figures in live.values():
        assert 0.0 <= figures["success"] <= 1.0 and figures["last_seen"].endswith("Z")
    assert main(["status", "smoke"]) == 0
    text = capsys.readouterr().out
    assert "EPISODES/1H" in text and "kuka-0" in text


def test_tracking_down_spools_warns_once_and_delivers_later(tmp_path, monkeypatch, capfd):
    from tests.fakes import make_policy_dir

    policy = make_policy_dir(tmp_path / "policy", horizon=8)
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")  # nothing listens there
    started = time.monotonic()
    assert main(["run", str(policy), "--robot", "sim:kuka-0", "--episodes", "3", "--telemetry-dir",
                 str(tmp_path / "spool"), *TASK]) == 0
    assert time.monotonic() - started < 30
    err = capfd.readouterr().err
    assert err.count("not reachable") == 1 and "Traceback" not in err
    assert len(Spool(tmp_path / "spool").pending().entries) == 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fleet_run(policy: Path, spool: Path, uri: str, episodes: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": uri}
    return subprocess.Popen([sys.executable, "-m", "metafleet", "run", str(policy), "--robot", "sim:kuka-0",
                             "--episodes", str(episodes), "--telemetry-dir", str(spool), *TASK],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
@pytest.mark.integration
def test_server_outage_and_a_killed_robot_deliver_every_episode_exactly_once(tmp_path):
    from mlflow.tracking import MlflowClient

    from tests.fakes import make_policy_dir

    policy = make_policy_dir(tmp_path / "policy", horizon=50)
    spool_dir, port = tmp_path / "spool", free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(port, tmp_path)
    try:
        first = fleet_run(policy, spool_dir, uri, 4)  # tracking up: delivered as it runs
        assert first.wait(timeout=120) == 0, first.stderr.read()
        stop_server(server)  # tracking goes away
        robot = fleet_run(policy, spool_dir, uri, 10_000)  # killed once, mid-run
        spool = Spool(spool_dir)
        deadline = time.monotonic() + 120
        while len(spool.read().entries) < 4 + 10 and time.monotonic() < deadline:
            time.sleep(0.2)
        robot.send_signal(signal.SIGKILL)
        robot.wait()
        offline = fleet_run(policy, spool_dir, uri, 3)  # tracking still down: spools, warns once, exits 0
        assert offline.wait(timeout=120) == 0
        assert offline.stderr.read().count("not reachable") == 1
        server = start_server(port, tmp_path)  # back, same port and store
        last = fleet_run(policy, spool_dir, uri, 2)  # the next run flushes everything
        assert last.wait(timeout=120) == 0, last.stderr.read()
        Delivery(Spool(spool_dir), uri).flush()  # a second flush delivers nothing twice
        spool.mark_delivered(0)  # even a lost delivered offset does not duplicate
        assert Delivery(Spool(spool_dir), uri).flush() == 0

        entries = Spool(spool_dir).read().entries
        assert len(entries) >= 4 + 10 + 3 + 2
        client = MlflowClient(uri)
        [run] = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "return")]
        assert sorted(steps) == list(range(len(entries)))  # every completed episode, exactly once
        assert sorted(steps) == sorted(e["record"]["index"] for e in entries)
    finally:
        stop_server(server)


def test_an_invalid_record_is_skipped_and_counted_never_crashing_the_robot_loop(tmp_path, monkeypatch, capsys):
    import deploy.telemetry_spool
    from tests.fakes import make_policy_dir

    policy = make_policy_dir(tmp_path / "policy", horizon=6)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(deploy.telemetry_spool, "percentile", lambda values, q: float("nan"))  # a broken figure
    assert main(["run", str(policy), "--robot", "sim:kuka-0", "--episodes", "3", "--telemetry-dir",
                 str(tmp_path / "spool"), "--json", *TASK]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert len(out["episodes"]) == 3 and out["telemetry"]["rejected"] == 3 and out["telemetry"]["pending"] == 0
    assert captured.err.count("failed validation") == 1
