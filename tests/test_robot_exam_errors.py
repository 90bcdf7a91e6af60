"""A robot-adaptation exam config with a bad key: exit code 2, a message naming the key; nothing started."""

from pathlib import Path

import pytest

from metafleet.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("overrides", "expected"), [
    (["learner.robot_params=[joint_gain]"], ["learner.robot_params", "'joint_gain'", "joint_gains"]),
    (["learner.robot_params=[]"], ["learner.robot_params is empty"]),
    (["learner.rma.history=50"], ["learner.rma.history (50)", "fleet.horizon (50)"]),
    (["learner.rma.adapt_from=100"], ["learner.rma.adapt_from (100)", "train.iterations (100)"]),
    (["learner.rma.latnt=4"], ["learner.rma.latnt", "unknown key"]),
    (["train.overlap=true"], ["train.overlap", "rma"]),
    (["fleet.eval_robots=[kuka-new-99]"], ["fleet.eval_robots", "kuka-new-99", "kuka-new-0"]),
    (["fleet.eval_robots=[kuka-3]"], ["fleet.eval_robots", "kuka-3", "split: test"]),
    (["fleet.family=robot_reach", "fleet.fleet_file=null", "fleet.robot=a1"], ["supports robot kinds"]),
])
@pytest.mark.usefixtures("ray_must_not_start")
def test_bad_exam_config_exits_2_before_anything_starts(tmp_path, monkeypatch, capsys, overrides, expected):
    monkeypatch.chdir(ROOT)  # the exam's fleet file is relative to the repository root
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    args = ["train", "configs/robots-arm.yaml"]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err
    for fragment in expected:
        assert fragment in err, err
    assert not (tmp_path / "mlflow.db").exists()
