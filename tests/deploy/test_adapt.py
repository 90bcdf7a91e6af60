"""fleet adapt: few-shot adaptation on a simulated robot, registered with lineage."""

import json

import pytest
from mlflow.tracking import MlflowClient

from metafleet.cli import main

GOAL = "goal=[0.62,0.12,0.38]"


def adapt(capfd, *args):
    code = main(["adapt", "models:/smoke/1", *args, "--json"])
    out, err = capfd.readouterr()
    return code, (json.loads(out) if code == 0 else err)


def test_adapt_on_sim_robot_registers_lineage(store, capfd):
    code, result = adapt(capfd, "--robot", "sim:kuka-7", "--task", GOAL, "--episodes", "3", "--steps", "2")
    assert code == 0, result
    assert result["model"] == "smoke-adapted" and result["robot_id"] == "kuka-7"
    assert result["task"] == {"goal": [0.62, 0.12, 0.38]}
    client = MlflowClient(store, store)
    version = client.get_model_version("smoke-adapted", result["version"])
    tags = version.tags
    assert tags["parent_model"] == "smoke" and tags["parent_version"] == "1"
    assert tags["robot_id"] == "kuka-7" and tags["adapt_episodes"] == "3" and tags["adapt_steps"] == "2"
    assert float(tags["return_before"]) == round(result["return_before"], 4)
    assert float(tags["return_after"]) == round(result["return_after"], 4)
    assert tags["weights_sha256"] and tags["parent_sha256"] == client.get_model_version("smoke", "1").tags[
        "weights_sha256"]
    moved = result["return_after"] >= result["return_before"]
    assert result["alias_moved"] == moved
    if moved:
        assert str(client.get_model_version_by_alias("smoke-adapted", "robot-kuka-7").version) == result["version"]


def test_adapted_policy_differs_from_its_parent(store, capfd, tmp_path):
    from deploy.registry import Registry
    from policy.artifact import PolicyArtifact

    code, result = adapt(capfd, "--robot", "sim:kuka-8", "--task", GOAL, "--episodes", "2")
    assert code == 0
    registry = Registry(store)
    parent = registry.load("models:/smoke/1")
    child = registry.load(f"models:/smoke-adapted/{result['version']}")
    assert isinstance(child, PolicyArtifact) and child.manifest["kind"] == "adapted-policy"
    assert child.manifest["lineage"]["parent_version"] == "1"
    changed = [k for k in parent.weights.arrays if (parent.weights.arrays[k] != child.weights.arrays[k]).any()]
    assert "mean_head.bias" in changed and "obs_mean" not in changed  # adapted params, same normaliser


def test_bad_adapt_input(store, capfd):
    assert adapt(capfd, "--robot", "ftp://x", "--episodes", "1")[0] == 2
    code, err = adapt(capfd, "--robot", "sim:kuka-1", "--task", "goal")
    assert code == 2 and "KEY=VALUE" in err
    code, err = adapt(capfd, "--robot", "sim:kuka-1", "--task", "goal=[1,2]")
    assert code == 2 and "goal" in err


def test_adapt_over_the_tcp_bridge_equals_sim(store, capfd, monkeypatch):
    """The same adaptation through RobotServer/RemoteRobot gives the same figures as in process."""
    from deploy.bridge import RobotServer
    from deploy.robot import SimRobot

    monkeypatch.setenv("METAFLEET_ROBOT_TOKEN", "adapt-test-token")
    server = RobotServer(SimRobot(horizon=10), "adapt-test-token").start()
    try:
        address = f"tcp://127.0.0.1:{server.address[1]}"
        code, remote = adapt(capfd, "--robot", address, "--robot-id", "arm-9", "--task", GOAL, "--episodes", "2")
    finally:
        server.stop()
    assert code == 0, remote
    code, local = adapt(capfd, "--robot", "sim:arm-9", "--task", GOAL, "--episodes", "2")
    assert code == 0
    assert remote["robot_id"] == "arm-9"
    for key in ("return_before", "return_after", "success_before", "success_after"):
        assert remote[key] == pytest.approx(local[key], abs=1e-5), key


def test_unreachable_tcp_robot_is_bad_input(store, capfd, monkeypatch):
    import socket

    monkeypatch.setenv("METAFLEET_ROBOT_TOKEN", "t")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, err = adapt(capfd, "--robot", f"tcp://127.0.0.1:{port}", "--episodes", "1")
    assert code == 2 and str(port) in err
