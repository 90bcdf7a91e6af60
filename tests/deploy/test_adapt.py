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
    from deploy.bridge_server import RobotServer
    from deploy.sim_robot import SimRobot

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


# ---- the @robot-<id> alias on controlled figures ------------------------------------------------------
# `fleet adapt` moves @robot-<id> only if adaptation did not make the policy worse. The lineage test above
# derives "worse" from the figures the code reports; here the evaluation episodes' returns are chosen.
def chosen_evaluation(monkeypatch, before: float, after: float, blind: bool = False) -> None:
    """Give `fleet adapt`'s evaluation episodes (phase "eval") chosen returns: `before` for the parent's
    weights, `after` for any other (the adapted ones). Support episodes stay real, so adaptation runs.
    `blind`: the broken evaluation, which scores the parent's weights whatever it is given."""
    import dataclasses

    import numpy as np

    from deploy import adapt as adapt_module
    from deploy.registry import Registry

    parent = Registry().load("models:/smoke/1").weights
    real_collect = adapt_module.collect

    def collect(robot, weights, *args, **kwargs):
        batch = real_collect(robot, weights, *args, **kwargs)
        if batch.phase != "eval":
            return batch
        is_parent = blind or all(np.array_equal(weights.arrays[k], v) for k, v in parent.arrays.items())
        rewards = np.zeros_like(batch.rewards)
        rewards[:, 0] = before if is_parent else after  # the first step of an episode is always real
        return dataclasses.replace(batch, rewards=rewards)

    monkeypatch.setattr(adapt_module, "collect", collect)


ALIAS_CASES = {"better": (-3.0, -1.5, True), "worse": (-1.5, -3.0, False), "equal": (-2.0, -2.0, True)}


def check_robot_alias(store, capfd, monkeypatch, case: str, robot: str, blind: bool = False) -> None:
    """A first adaptation that helps sets @robot-<id>; then `case`'s figures decide whether it moves on."""
    client = MlflowClient(store, store)
    with monkeypatch.context() as patch:
        chosen_evaluation(patch, -3.0, -1.0, blind)
        code, first = adapt(capfd, "--robot", f"sim:{robot}", "--task", GOAL, "--episodes", "1")
    assert code == 0 and first["alias_moved"], first
    before, after, moves = ALIAS_CASES[case]
    with monkeypatch.context() as patch:
        chosen_evaluation(patch, before, after, blind)
        code, second = adapt(capfd, "--robot", f"sim:{robot}", "--task", GOAL, "--episodes", "1")
    assert code == 0 and (second["return_before"], second["return_after"]) == (before, after)
    assert second["alias_moved"] is moves
    holder = str(client.get_model_version_by_alias("smoke-adapted", f"robot-{robot}").version)
    assert holder == (second["version"] if moves else first["version"])
    tags = client.get_model_version("smoke-adapted", second["version"]).tags
    assert tags["robot_alias_moved"] == str(moves).lower()
    assert (float(tags["return_before"]), float(tags["return_after"])) == (before, after)


@pytest.mark.parametrize("case", list(ALIAS_CASES))
def test_robot_alias_follows_the_figures(store, capfd, monkeypatch, case):
    """Better: the alias moves; worse: it stays on the earlier version; equal: it moves (not worse)."""
    check_robot_alias(store, capfd, monkeypatch, case, f"fig-{case}")


def test_alias_kept_says_why(store, capfd, monkeypatch):
    chosen_evaluation(monkeypatch, -1.0, -4.0)
    assert main(["adapt", "models:/smoke/1", "--robot", "sim:fig-text", "--task", GOAL, "--episodes", "1"]) == 0
    out = capfd.readouterr().out
    assert "return  before    -1.00   after    -4.00" in out
    assert "alias @robot-fig-text NOT moved (adaptation made it worse)" in out


@pytest.mark.parametrize("case", ["better", "worse"])
def test_an_evaluation_blind_to_adaptation_fails_the_alias_check(store, capfd, monkeypatch, case):
    """The check can fail: if the adapted policy were scored with the parent's weights, it does."""
    with pytest.raises(AssertionError):
        check_robot_alias(store, capfd, monkeypatch, case, f"blind-{case}", blind=True)
