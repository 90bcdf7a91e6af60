"""The whole lifecycle on tiny budgets, through the CLI: train -> register -> adapt (sim and tcp)
-> promote -> pull -> run (sim and tcp)."""

import json
import os
import socket
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from metafleet.cli import main

pytestmark = pytest.mark.integration
GOAL = "goal=[0.6,0.1,0.42]"


def cli_json(capfd, *args):
    assert main([*args, "--json"]) == 0
    return json.loads(capfd.readouterr().out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_train_adapt_promote_pull_run(mlflow_uri, request, capfd, tmp_path, monkeypatch):
    assert main(["train", str(request.config.rootpath / "configs/smoke.yaml")]) == 0
    capfd.readouterr()
    adapted = cli_json(capfd, "adapt", "models:/smoke@candidate", "--robot", "sim:kuka-5", "--task", GOAL,
                       "--episodes", "2")
    promoted = cli_json(capfd, "promote", "smoke", "--version", "1", "--alias", "production", "--episodes", "2")
    assert promoted["promoted"]

    monkeypatch.setenv("METAFLEET_ROBOT_TOKEN", "lifecycle-token")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "metafleet", "serve-robot", "sim:kuka-5?horizon=10", "--port",
                               str(port)], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert "serving" in server.stdout.readline()
        remote = cli_json(capfd, "adapt", "models:/smoke@production", "--robot", f"tcp://127.0.0.1:{port}",
                          "--robot-id", "kuka-5-tcp", "--task", GOAL, "--episodes", "2")
        alias = f"robot-{adapted['robot_id']}" if adapted["alias_moved"] else "candidate"
        pulled = cli_json(capfd, "pull", f"models:/smoke-adapted@{alias}", "--out", str(tmp_path / "policy"))
        on_sim = cli_json(capfd, "run", str(tmp_path / "policy"), "--robot", "sim:kuka-5", "--task", GOAL,
                          "--episodes", "2")
        over_tcp = cli_json(capfd, "run", str(tmp_path / "policy"), "--robot", f"tcp://127.0.0.1:{port}",
                            "--task", GOAL, "--episodes", "2")
    finally:
        server.terminate()
        server.wait(timeout=30)

    client = MlflowClient(mlflow_uri, mlflow_uri)
    lineage = client.get_model_version("smoke-adapted", remote["version"]).tags
    assert lineage["parent_model"] == "smoke" and lineage["parent_version"] == "1"
    assert lineage["robot_id"] == "kuka-5-tcp"
    assert pulled["name"] == "smoke-adapted"
    assert len(on_sim["episodes"]) == 2 and on_sim["mean_return"] == pytest.approx(over_tcp["mean_return"])
