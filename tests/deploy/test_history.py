"""Fleet history and rollback: every alias move recorded in the registry; `fleet history/rollback/status`."""

import json
import math

import pytest
from mlflow.tracking import MlflowClient

from deploy.history import (
    PREFIX,
    AliasMove,
    HistoryError,
    fleet_status,
    move_alias,
    read_history,
    rollback,
    rollback_target,
)
from metafleet.cli import main


# ---- history.py on a bare sqlite registry (no training) -------------------------------------------------
@pytest.fixture(scope="module")
def client(tmp_path_factory):
    home = tmp_path_factory.mktemp("history")
    uri = f"sqlite:///{home}/mlflow.db"
    return MlflowClient(uri, uri)


def new_model(client, name: str, versions: int = 4, tags=None) -> str:
    client.create_registered_model(name)
    for _ in range(versions):
        client.create_model_version(name, source=f"/nowhere/{name}", tags=tags or {})
    return name


def move(client, model, version, passed=True, alias="robot-r1", gate="adapt", **figures):
    return move_alias(client, model, alias, version, reason=f"to {version}", gate=gate, passed=passed,
                      figures=figures, command="test")


def test_a_move_is_recorded_as_strict_json_in_the_registry(client, monkeypatch):
    monkeypatch.setenv("METAFLEET_USER", "alice")
    model = new_model(client, "strict")
    first = move(client, model, "1", return_before=-3.0, return_after=float("nan"), robot="r1", steps=2)
    second = move(client, model, "2", passed=False)
    assert str(client.get_model_version_by_alias(model, "robot-r1").version) == "2"
    tags = {k: v for k, v in client.get_registered_model(model).tags.items() if k.startswith(PREFIX)}
    assert sorted(tags) == [first.key, second.key]

    def strict(name):
        raise AssertionError(f"{name} in a record")

    record = json.loads(tags[first.key], parse_constant=strict)
    assert record["alias"] == "robot-r1" and record["from_version"] is None and record["to_version"] == "1"
    assert record["who"] == "alice" and record["when"].endswith("Z") and record["command"] == "test"
    assert record["why"] == {"reason": "to 1", "gate": "adapt", "passed": True,
                             "figures": {"return_before": -3.0, "return_after": None, "robot": "r1", "steps": 2}}
    assert json.loads(tags[second.key])["from_version"] == "1" and (first.seq, second.seq) == (1, 2)
    assert (second.from_version, second.passed, second.robot) == ("1", False, "r1")


def test_a_record_that_cannot_be_written_leaves_the_alias_alone(client):
    model = new_model(client, "limits", 2)
    move(client, model, "1")
    with pytest.raises(ValueError, match="at most 5000"):
        move(client, model, "2", **{f"figure_{i}": "x" * 200 for i in range(40)})
    with pytest.raises(TypeError, match="figure 'nested'"):
        move(client, model, "2", nested={"a": 1})
    assert str(client.get_model_version_by_alias(model, "robot-r1").version) == "1"
    assert len(read_history(client, model)[0]) == 1


def test_history_is_ordered_and_filtered_by_alias(client):
    model = new_model(client, "order")
    for alias, version in [("candidate", "1"), ("robot-a", "1"), ("candidate", "2"), ("robot-b", "2"),
                           ("robot-a", "3")]:
        move(client, model, version, alias=alias)
    records, problems = read_history(client, model)
    assert problems == [] and [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert [(r.alias, r.to_version) for r in records][:3] == [("candidate", "1"), ("robot-a", "1"), ("candidate", "2")]
    robot_a, _ = read_history(client, model, "robot-a")
    assert [(r.from_version, r.to_version) for r in robot_a] == [(None, "1"), ("1", "3")]


@pytest.mark.parametrize("case, value", enumerate([
    "not json", '{"format": 1, "why": {}}', "[1, 2]", "__import__('os').system('touch /tmp/pwned')",
    None]))  # None: a valid record with NaN in it (not strict JSON)
def test_a_tag_that_is_not_a_valid_record_is_reported_and_never_trusted(client, case, value):
    model = new_model(client, f"bad-{case}", 3)
    move(client, model, "1")
    move(client, model, "2")
    if value is None:
        good = client.get_registered_model(model).tags
        value = good[min(k for k in good if k.startswith(PREFIX))].replace('"passed":true', '"passed":NaN')
    client.set_registered_model_tag(model, f"{PREFIX}00000000000000000001.forged00", value)  # sorts first
    records, problems = read_history(client, model)
    assert [r.to_version for r in records] == ["1", "2"] and len(problems) == 1 and "forged00" in problems[0]
    assert rollback(client, model, "robot-r1")[0].to_version == "1"


def record(seq, to, passed=True, gate="adapt", frm=None):
    return AliasMove(seq, f"k{seq}", "m", "robot-x", frm, to, "u", "h", "2026-01-01T00:00:00Z", "", gate, passed,
                     {}, "")


@pytest.mark.parametrize("history, current, expected", [
    ([record(1, "1"), record(2, "2"), record(3, "3")], "3", "2"),                 # the previous good version
    ([record(1, "1"), record(2, "2", passed=False), record(3, "3")], "3", "1"),   # a forced move did not pass
    ([record(1, "1"), record(2, "2"), record(3, "1", True, "rollback", "2")], "1", None),  # v2 was rolled back
    ([record(1, "1"), record(2, "2"), record(3, "1", True, "rollback", "2"), record(4, "2")], "2", "1"),  # passed again
    ([record(1, "1"), record(2, "2"), record(3, "3")], "5", "3"),                 # alias moved outside the history
    ([record(1, "1", None), record(2, "2", None)], "2", "1"),                     # an alias without a gate
    ([record(1, "1")], "1", None),                                                # nothing earlier
    ([], "1", None),
])
def test_rollback_rules(history, current, expected):
    target = rollback_target(history, current)
    assert (target.to_version if target else None) == expected


def test_rollback_skips_deleted_versions_and_marks_what_it_leaves(client):
    model = new_model(client, "rules", 5)
    for version in ("1", "2", "3", "4"):
        move(client, model, version)
    client.delete_model_version(model, "3")
    moved, restored = rollback(client, model, "robot-r1", reason="wrist camera fault")
    assert (moved.from_version, moved.to_version, moved.gate) == ("4", "2", "rollback")
    assert restored.to_version == "2" and restored.gate == "adapt" and "wrist camera fault" in moved.reason
    assert rollback(client, model, "robot-r1")[0].to_version == "1"
    with pytest.raises(HistoryError, match="nothing to roll back to: models:/rules@robot-r1 is on v1"):
        rollback(client, model, "robot-r1")
    move(client, model, "5")
    assert rollback(client, model, "robot-r1")[0].to_version == "1"  # v2 and v4 stay rolled back


def test_rollback_bad_input(client):
    new_model(client, "lonely", 1)
    with pytest.raises(HistoryError, match="no registered model 'nope'"):
        rollback(client, "nope", "robot-r1")
    with pytest.raises(HistoryError, match="models:/lonely@robot-r1 is not set"):
        rollback(client, "lonely", "robot-r1")


def test_status_reads_lineage_gain_and_last_move(client):
    tags = {"parent_model": "meta", "parent_version": "7", "return_before": "-3.0", "return_after": "-1.25"}
    model = new_model(client, "status", 2, tags)
    move(client, model, "1", alias="robot-a")
    client.set_registered_model_alias(model, "robot-b", "2")  # outside the history
    rows = {r["alias"]: r for r in fleet_status(client, [model])}
    assert rows["robot-a"]["parent"] == "meta/7" and math.isclose(rows["robot-a"]["gain"], 1.75)
    assert rows["robot-a"]["recorded"] and rows["robot-a"]["robot"] == "a" and rows["robot-a"]["version"] == "1"
    assert not rows["robot-b"]["recorded"] and rows["robot-b"]["moved"] is None


# ---- the real CLI: train, promote, adapt two robots, roll one back, pull -------------------------------
def chosen_returns(monkeypatch, store, before: float, after: float) -> None:
    """`fleet adapt`'s evaluation episodes get `before` for the parent's weights, `after` for the adapted."""
    import dataclasses

    import numpy as np

    from deploy import adapt as adapt_module
    from deploy.registry import Registry

    parent = Registry(store).load("models:/smoke/1").weights
    real = adapt_module.collect

    def collect(robot, weights, *args, **kwargs):
        batch = real(robot, weights, *args, **kwargs)
        if batch.phase != "eval":
            return batch
        same = all(np.array_equal(weights.arrays[k], v) for k, v in parent.arrays.items())
        rewards = np.zeros_like(batch.rewards)
        rewards[:, 0] = before if same else after
        return dataclasses.replace(batch, rewards=rewards)

    monkeypatch.setattr(adapt_module, "collect", collect)


def run(capfd, *argv):
    code = main(list(argv))
    out, err = capfd.readouterr()
    return code, out, err


def adapt(store, capfd, monkeypatch, robot, before, after):
    with monkeypatch.context() as patch:
        chosen_returns(patch, store, before, after)
        code, out, err = run(capfd, "adapt", "models:/smoke@production", "--robot", f"sim:{robot}", "--episodes", "1",
                             "--json")
    assert code == 0, err
    return json.loads(out)


def test_promote_adapt_two_robots_roll_one_back_and_pull(store, capfd, monkeypatch, tmp_path):
    monkeypatch.setenv("METAFLEET_USER", "operator-7")
    code, _, err = run(capfd, "promote", "smoke", "--version", "1", "--episodes", "1", "--tasks", "2")
    assert code == 0, err
    a1 = adapt(store, capfd, monkeypatch, "arm-a", -3.0, -1.0)   # moves @robot-arm-a
    b1 = adapt(store, capfd, monkeypatch, "arm-b", -3.0, -2.0)   # moves @robot-arm-b
    a2 = adapt(store, capfd, monkeypatch, "arm-a", -2.5, -1.5)   # moves @robot-arm-a on
    a3 = adapt(store, capfd, monkeypatch, "arm-a", -1.0, -4.0)   # worse: @robot-arm-a stays
    assert [a1["alias_moved"], b1["alias_moved"], a2["alias_moved"], a3["alias_moved"]] == [True, True, True, False]

    code, out, err = run(capfd, "rollback", "smoke-adapted", "--robot", "arm-a", "--reason", "gripper slips")
    assert code == 0, err
    assert f"models:/smoke-adapted@robot-arm-a: v{a2['version']} -> v{a1['version']} (rolled back)" in out
    assert "return_after=-1 return_before=-3" in out

    code, out, err = run(capfd, "history", "smoke-adapted", "--robot", "arm-a")
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("#")]
    assert len(lines) == 3 and "3 recorded alias moves" in out
    assert f"@robot-arm-a: (unset) -> v{a1['version']}  by operator-7@" in lines[0] and "[adapt: passed]" in lines[0]
    assert f"v{a1['version']} -> v{a2['version']}" in lines[1]
    assert f"v{a2['version']} -> v{a1['version']}" in lines[2] and "[rollback: passed]" in lines[2]
    assert "gripper slips" in out and "adaptation did not make it worse: return -1.000 after >= -3.000" in out
    code, out, _ = run(capfd, "history", "smoke-adapted", "--robot", "arm-a", "--json")
    moves = json.loads(out)
    assert [m["why"]["figures"]["gain"] for m in moves] == [2.0, 1.0, 2.0]
    assert moves[2]["command"] == "fleet rollback smoke-adapted --robot arm-a --reason 'gripper slips'"

    code, out, _ = run(capfd, "history", "smoke", "--json")
    meta = [(m["alias"], m["to_version"], m["why"]["gate"]) for m in json.loads(out)]
    assert meta == [("candidate", "1", "train"), ("candidate", "2", "train"), ("production", "1", "promote")]

    code, out, err = run(capfd, "status", "smoke", "--json")
    assert code == 0, err
    rows = {r["alias"]: r for r in json.loads(out)}
    assert rows["production"]["version"] == "1" and rows["production"]["model"] == "smoke"
    arm_a, arm_b = rows["robot-arm-a"], rows["robot-arm-b"]
    assert (arm_a["version"], arm_a["parent"], arm_a["gain"], arm_a["gate"]) == (a1["version"], "smoke/1", 2.0,
                                                                                  "rollback")
    assert (arm_b["version"], arm_b["parent"], arm_b["gain"], arm_b["by"]) == (b1["version"], "smoke/1", 1.0,
                                                                                "operator-7")
    code, out, _ = run(capfd, "status", "smoke")
    line = next(row for row in out.splitlines() if "@robot-arm-b" in row)
    assert line.split()[:6] == ["smoke-adapted", "@robot-arm-b", "arm-b", f"v{b1['version']}", "smoke/1", "+1.000"]

    for robot, expected in (("arm-a", a1["version"]), ("arm-b", b1["version"])):
        code, out, err = run(capfd, "pull", f"models:/smoke-adapted@robot-{robot}", "--out", str(tmp_path / robot),
                             "--json")
        assert code == 0, err
        pulled = json.loads(out)
        tags = MlflowClient(store, store).get_model_version("smoke-adapted", expected).tags
        assert pulled["version"] == expected and pulled["sha256"] == tags["content_sha256"]

    code, _, err = run(capfd, "rollback", "smoke-adapted", "--robot", "arm-a")
    assert code == 2 and "nothing to roll back to" in err and "Traceback" not in err
    code, _, err = run(capfd, "rollback", "smoke", "--robot", "arm-a")
    assert code == 2 and "robot aliases are set on 'smoke-adapted'" in err
    code, _, err = run(capfd, "rollback", "no-such-model", "--robot", "arm-a")
    assert code == 2 and "no registered model 'no-such-model'" in err
    code, _, err = run(capfd, "history", "smoke-adapted", "--robot", "arm-z")
    assert code == 2 and "models:/smoke-adapted@robot-arm-z is not set" in err
    code, _, err = run(capfd, "status", "no-such-model")
    assert code == 2 and "no registered model" in err
