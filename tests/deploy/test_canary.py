"""`fleet promote models:/NAME@candidate --canary ...`: canaries first, then the fleet or a rollback, all recorded."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.history import move_alias, read_history
from metafleet.cli import main

ROOT = Path(__file__).resolve().parents[2]
FEEDER = """
import os, sys, time
from pathlib import Path
from metafleet.cli import main
stop, work = Path(sys.argv[1]), Path(sys.argv[2])
while not stop.exists():
    if main(["pull", "models:/smoke@robot-kuka-0", "--out", str(work / "policy")]) == 0:
        main(["run", str(work / "policy"), "--robot", "sim:kuka-0", "--episodes", "2",
              "--telemetry-dir", str(work / "spool"), "--task", "goal=[0.6, 0.1, 0.4]"])
    time.sleep(0.5)
"""


@pytest.fixture
def fleet(store):
    """smoke v1 on @production and on robots kuka-0 and kuka-1; @candidate is v2 (the second training)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store, store)
    for alias in ("production", "robot-kuka-0", "robot-kuka-1"):
        move_alias(client, "smoke", alias, "1", reason="test fleet", gate="test", passed=None)
    assert str(client.get_model_version_by_alias("smoke", "candidate").version) == "2"
    return client


def aliases(client) -> dict:
    return {k: str(v) for k, v in client.get_registered_model("smoke").aliases.items()}


@pytest.mark.parametrize("argv, complaint", [
    (["--canary", "kuka-0", "--gate", "success=>0.5"], "does not parse"),
    (["--canary", "kuka-0", "--gate", "speed>=1"], "does not parse"),
    (["--canary", "kuka-0,arm-9", "--gate", "success>=0.5"], "unknown robot arm-9"),
    (["--canary", "kuka-0", "--gate", "success>=0.5", "--episodes", "0"], "--episodes must be >= 1"),
    (["--canary", "kuka-0"], "needs both"),
    (["--canary", "kuka-0", "--gate", "success>=0.5", "--deadline", "0"], "--deadline must be > 0"),
])
def test_bad_input_exits_2_before_any_alias_moves(fleet, capfd, argv, complaint):
    before, moves = aliases(fleet), len(read_history(fleet, "smoke")[0])
    assert main(["promote", "models:/smoke@candidate", *argv]) == 2
    err = capfd.readouterr().err
    assert complaint in err and "Traceback" not in err
    assert aliases(fleet) == before and len(read_history(fleet, "smoke")[0]) == moves


def test_a_silent_canary_is_rolled_back_after_the_deadline(fleet, capfd):
    code = main(["promote", "models:/smoke@candidate", "--canary", "kuka-0", "--gate", "success>=0",
                 "--episodes", "3", "--deadline", "2", "--json"])
    decision = json.loads(capfd.readouterr().out)
    assert code == 1 and not decision["promoted"] and "deadline" in decision["reason"]
    assert aliases(fleet)["robot-kuka-0"] == "1" and aliases(fleet)["production"] == "1"
    canary = [m for m in read_history(fleet, "smoke")[0] if m.gate == "canary"][-2:]
    assert [(m.alias, m.to_version, m.passed) for m in canary] == [("robot-kuka-0", "2", None),
                                                                  ("robot-kuka-0", "1", False)]
    assert canary[1].figures["canary_episodes"] == 0


def feed(store, tmp_path):
    stop = tmp_path / "stop"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": store}
    proc = subprocess.Popen([sys.executable, "-c", FEEDER, str(stop), str(tmp_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return stop, proc


@pytest.mark.integration
def test_worse_candidate_rolls_back_and_better_one_reaches_the_fleet(fleet, store, tmp_path, capfd):
    stop, proc = feed(store, tmp_path)
    try:  # the gate the candidate cannot meet: rolled back on its reported figures
        code = main(["promote", "models:/smoke@candidate", "--canary", "kuka-0", "--gate", "return>=1000",
                     "--episodes", "2", "--deadline", "120", "--json"])
        decision = json.loads(capfd.readouterr().out)
        assert code == 1 and not decision["promoted"] and "fails return>=1000" in decision["reason"], decision
        assert decision["figures"]["canary_episodes"] >= 2
        assert aliases(fleet)["robot-kuka-0"] == "1"
        code = main(["promote", "models:/smoke@candidate", "--canary", "kuka-0", "--gate", "return>=-1000",
                     "--episodes", "2", "--deadline", "120", "--json"])
        decision = json.loads(capfd.readouterr().out)
        assert code == 0 and decision["promoted"], decision
    finally:
        stop.touch()
        proc.wait(timeout=120)
    assert {k: aliases(fleet)[k] for k in ("production", "robot-kuka-0", "robot-kuka-1")} == {
        "production": "2", "robot-kuka-0": "2", "robot-kuka-1": "2"}
    assert main(["history", "smoke", "--json"]) == 0
    canary = [m for m in json.loads(capfd.readouterr().out) if m["why"]["gate"] == "canary"]
    decided = [m for m in canary if m["why"]["passed"] is not None][-3:]  # this test's decisions, in order
    assert [(m["alias"], m["to_version"], m["why"]["passed"]) for m in decided] == [
        ("robot-kuka-0", "1", False), ("production", "2", True), ("robot-kuka-1", "2", True)]
    assert all(m["why"]["figures"]["canary_episodes"] >= 2 for m in decided)
    assert main(["history", "smoke"]) == 0
    assert "canary_return=" in capfd.readouterr().out  # the figures behind each decision, in the text too
