"""Fleet specs: listed and sampled variation, seeding, held-out robots, strict errors, config wiring."""

from __future__ import annotations

import pytest

from fleet.fleetspec import FleetSpecError, load_fleet_file, parse_fleet, single_robot_fleet
from learner.config import ConfigError, load_config

ENTRIES = [
    {"model": "kuka_iiwa", "id": "kuka", "count": 4, "link_mass_scale": {"uniform": [0.8, 1.2]},
     "joint_damping": 0.5, "motor_strength": {"uniform": [0.7, 1.0]}},
    {"model": "kuka_iiwa", "id": "kuka-new", "split": "test", "link_mass_scale": 1.3},
]


def test_listed_and_sampled_variation():
    fleet = parse_fleet(ENTRIES, seed=3)
    assert [r.robot_id for r in fleet.train] == ["kuka-0", "kuka-1", "kuka-2", "kuka-3"]
    assert [r.robot_id for r in fleet.test] == ["kuka-new"]
    assert all(0.8 <= r.link_mass_scale <= 1.2 and 0.7 <= r.motor_strength <= 1.0 for r in fleet.train)
    assert all(r.joint_damping == 0.5 for r in fleet.train)
    assert len({r.link_mass_scale for r in fleet.train}) == 4  # sampled per robot
    assert fleet.test[0].link_mass_scale == 1.3 and fleet.test[0].motor_strength == 1.0


def test_same_spec_and_seed_give_the_same_fleet():
    assert parse_fleet(ENTRIES, seed=3) == parse_fleet(ENTRIES, seed=3)
    assert parse_fleet(ENTRIES, seed=3).train != parse_fleet(ENTRIES, seed=4).train
    # entries draw from their own streams: appending an entry leaves the earlier robots unchanged
    more = parse_fleet([*ENTRIES, {"model": "kuka_iiwa", "id": "extra", "link_mass_scale": {"uniform": [1, 2]}}], 3)
    assert more.train[:4] == parse_fleet(ENTRIES, seed=3).train


@pytest.mark.parametrize(("entries", "fragments"), [
    ([{"model": "kuka_iiwa", "mass": 1}], ["fleet.robots[0]", "unknown key(s) ['mass']", "link_mass_scale"]),
    ([{"model": "r2d2"}], ["fleet.robots[0].model", "'r2d2'", "kuka_iiwa"]),
    ([{"model": "kuka_iiwa"}, {"model": "kuka_iiwa", "id": "b", "link_mass_scale": {"uniform": [1.2, 0.8]}}],
     ["fleet.robots[1].link_mass_scale.uniform", "low must be <= high"]),
    ([{"model": "kuka_iiwa", "joint_damping": {"uniform": [0, 50]}}], ["fleet.robots[0].joint_damping", "<= 20"]),
    ([{"model": "kuka_iiwa", "motor_strength": {"normal": [1, 0.1]}}], ["motor_strength", "{uniform: [low, high]}"]),
    ([{"model": "kuka_iiwa", "link_mass_scale": {"uniform": [1]}}], ["link_mass_scale.uniform", "two numbers"]),
    ([{"model": "kuka_iiwa", "link_mass_scale": -1}], ["link_mass_scale", "must be > 0"]),
    ([{"model": "kuka_iiwa", "count": 0}], ["fleet.robots[0].count", "[1, 10000]"]),
    ([{"model": "kuka_iiwa", "split": "eval"}], ["fleet.robots[0].split", "'train' or 'test'"]),
    ([{"model": "kuka_iiwa", "id": "a"}, {"model": "kuka_iiwa", "id": "a"}], ["unique", "['a']"]),
    ([{"model": "kuka_iiwa", "split": "test"}], ["at least one robot must be for training"]),
    ([], ["non-empty list"]),
    (["kuka_iiwa"], ["fleet.robots[0]", "expected a mapping"]),
])
def test_bad_entries_name_the_entry_and_key(entries, fragments):
    with pytest.raises(FleetSpecError) as err:
        parse_fleet(entries, seed=0, source="fleet.robots")
    for fragment in fragments:
        assert fragment in str(err.value)


def test_fleet_file_as_mapping_or_list(tmp_path):
    mapping = tmp_path / "fleet.yaml"
    entry = "{model: kuka_iiwa, id: k, count: 2, link_mass_scale: {uniform: [0.5, 2]}}"
    mapping.write_text(f"seed: 7\nrobots:\n  - {entry}\n")
    listed = tmp_path / "list.yaml"
    listed.write_text("- {model: kuka_iiwa, id: k, count: 2, link_mass_scale: {uniform: [0.5, 2]}}\n")
    from_file = load_fleet_file(mapping)
    assert from_file.seed == 7 and from_file == parse_fleet(
        [{"model": "kuka_iiwa", "id": "k", "count": 2, "link_mass_scale": {"uniform": [0.5, 2]}}], seed=7)
    assert load_fleet_file(listed, seed=7) == from_file  # the run's fleet_seed wins
    assert load_fleet_file(mapping, seed=0) != from_file
    with pytest.raises(FleetSpecError, match="not found"):
        load_fleet_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("robot: []\n")
    with pytest.raises(FleetSpecError, match="expected keys 'robots'"):
        load_fleet_file(bad)


def test_train_robot_pairing_is_seeded_and_spreads_over_the_train_robots():
    fleet = parse_fleet(ENTRIES, seed=0)
    picks = [fleet.train_robot(f"reach/train/{i}", seed=0, iteration=it) for i in range(10) for it in range(10)]
    assert set(picks) == set(fleet.train)  # every train robot used, never the held-out one
    again = [fleet.train_robot(f"reach/train/{i}", seed=0, iteration=it) for i in range(10) for it in range(10)]
    assert picks == again
    assert picks != [fleet.train_robot(f"reach/train/{i}", seed=1, iteration=it) for i in range(10) for it in range(10)]


def test_eval_robots_use_held_out_robots_or_all():
    fleet = parse_fleet(ENTRIES, seed=0)
    assert fleet.eval_robots(3) == [fleet.test[0]] * 3
    no_test = single_robot_fleet("kuka_iiwa", "k")
    assert no_test.eval_robots(2) == [no_test.train[0]] * 2
    two = parse_fleet([{"model": "kuka_iiwa", "count": 3}], seed=0)
    assert two.eval_robots(4) == [two.train[0], two.train[1], two.train[2], two.train[0]]


def test_config_accepts_inline_robots_and_fleet_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f.yaml").write_text("robots:\n  - {model: kuka_iiwa, id: k, count: 2}\n")
    inline = load_config(data={"fleet": {"robots": ENTRIES, "fleet_seed": 3}})
    assert inline.fleet.build_fleet() == parse_fleet(ENTRIES, seed=3)
    from_file = load_config(data={"fleet": {"fleet_file": "f.yaml"}})
    assert [r.robot_id for r in from_file.fleet.build_fleet().train] == ["k-0", "k-1"]
    shorthand = load_config(data={"fleet": {"robot_id": "arm-9"}}).fleet.build_fleet()
    assert [r.robot_id for r in shorthand.train] == ["arm-9"] and shorthand.test == ()
    # a saved config (what --resume reads back) holds the default shorthand too: still valid
    assert load_config(data=inline.to_dict()).fleet.build_fleet() == inline.fleet.build_fleet()


@pytest.mark.parametrize(("fleet", "fragments"), [
    ({"robots": [{"model": "kuka_iiwa", "cnt": 2}]}, ["fleet.robots[0]", "'cnt'"]),
    ({"robots": [{"model": "kuka_iiwa"}], "fleet_file": "x.yaml"}, ["not both"]),
    ({"robots": [{"model": "kuka_iiwa"}], "robot_id": "other"}, ["replaces fleet.robot_id"]),
    ({"fleet_file": "nope.yaml"}, ["fleet file 'nope.yaml' not found"]),
    ({"family": "reach", "robot": "a1"}, ["'reach' supports robot kinds", "'a1'", "'quadruped'"]),
    ({"family": "reach", "robots": [{"model": "kuka_iiwa"}, {"model": "half_cheetah", "id": "c"}]},
     ["'reach' supports robot kinds", "'half_cheetah'"]),
])
def test_bad_fleet_config_is_a_config_error(tmp_path, monkeypatch, fleet, fragments):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_config(data={"fleet": fleet})
    for fragment in fragments:
        assert fragment in str(err.value)
