"""A `sim:` address that names a robot of a fleet spec file: `sim:<robot-id>?fleet_file=PATH[&fleet_seed=N]`.

The simulated robot is that RobotSpec (held-out robots and joint gains included); a robot id the file lacks fails
before anything starts (exit 2, naming the id and listing the file's ids, held-out ones marked); the fleet file
comes from the operator's address only, never as a default filled in from a manifest."""

import argparse

import numpy as np
import pytest

from deploy.connect import _parse_sim, check_address, connect_robot, with_sim_defaults
from fleet.fleetspec import load_fleet_file
from metafleet.robot_commands import add_parsers
from tests.deploy.conftest import ROOT
from tests.fakes import make_policy_dir

GAINS = str(ROOT / "configs/fleets/kuka-gains.yaml")
HELD_OUT = f"sim:kuka-new-3?fleet_file={GAINS}"


def fleet(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fleet")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.handler(args)


def test_the_address_names_the_fleet_files_robot_gains_and_all():
    robots = load_fleet_file(GAINS)
    parsed = _parse_sim(with_sim_defaults(HELD_OUT, family="robot_reach", model="panda"))
    assert parsed["robot"] == robots.test[3] and parsed["family"] == "robot_reach"  # the file's model, not panda
    assert parsed["robot"].joint_gains and parsed["robot"].robot_id == "kuka-new-3"
    assert _parse_sim(f"sim:kuka-5?fleet_file={GAINS}")["robot"] == robots.train[5]
    reseeded = _parse_sim(f"{HELD_OUT}&fleet_seed=7")["robot"]
    assert reseeded == load_fleet_file(GAINS, 7).test[3] and reseeded != robots.test[3]


@pytest.mark.parametrize(("address", "fragment"), [
    (f"sim:kuka-new-10?fleet_file={GAINS}", "holds no robot 'kuka-new-10'; its robots: kuka-0, kuka-1,"),
    (f"{HELD_OUT}&model=panda", "fleet_file names the whole robot; drop model"),
    (f"{HELD_OUT}&motor_strength=0.5", "drop motor_strength"),
    ("sim:kuka-new-3?fleet_seed=1", "fleet_seed goes with fleet_file"),
    (f"{HELD_OUT}&fleet_seed=-1", "fleet_seed must be an integer >= 0"),
    ("sim:kuka-new-3?fleet_file=no/such/fleet.yaml", "not found"),
])
def test_a_bad_fleet_file_address_is_refused_before_anything_opens(address, fragment):
    with pytest.raises(ValueError) as caught:
        check_address(address)
    assert fragment in str(caught.value)


def test_an_unknown_id_lists_the_files_robots_held_out_ones_marked():
    with pytest.raises(ValueError) as caught:
        check_address(f"sim:kuka-99?fleet_file={GAINS}")
    text = str(caught.value)
    assert "'kuka-99'" in text and "kuka-31, kuka-new-0 (held out)" in text and "kuka-new-9 (held out)" in text
    assert "kuka-5 (held out)" not in text


def test_a_fleet_file_never_comes_as_a_default():
    with pytest.raises(ValueError, match="from the robot address only"):
        with_sim_defaults("sim:kuka-1", fleet_file=GAINS)
    with pytest.raises(ValueError, match="from the robot address only"):
        with_sim_defaults("sim:kuka-1", fleet_seed=3)


def test_the_cli_exits_2_naming_the_id_before_anything_starts(tmp_path, monkeypatch, capsys):
    policy = str(make_policy_dir(tmp_path / "policy", horizon=4))
    assert fleet("run", policy, "--robot", f"sim:kuka-new-42?fleet_file={GAINS}") == 2
    err = capsys.readouterr().err
    assert "holds no robot 'kuka-new-42'" in err and "kuka-new-3 (held out)" in err
    monkeypatch.setenv("METAFLEET_ROBOT_TOKEN", "fleet-file-token-123")
    assert fleet("serve-robot", f"sim:kuka-new-42?fleet_file={GAINS}") == 2
    assert "holds no robot 'kuka-new-42'" in capsys.readouterr().err


def test_the_simulated_robot_is_the_held_out_robot():
    robot = connect_robot(f"{HELD_OUT}&family=robot_reach&horizon=3")
    try:
        assert robot.robot_spec == load_fleet_file(GAINS).test[3]
        obs = robot.reset(task={"goal": [0.6, 0.1, 0.4]}, seed=0)
        assert obs.shape == (23,) and robot.action_low.shape == (7,)
        assert np.isfinite(robot.act(np.full(7, 0.5, np.float32)).observation).all()
    finally:
        robot.close()
