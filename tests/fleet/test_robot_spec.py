"""RobotSpec validation and serialisation, robot model lookup, errors, and import hygiene."""

from __future__ import annotations

import importlib
import json
import math
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import fleet
from fleet import ROBOT_MODELS, RobotSpec, UnknownNameError, get_robot_model


def test_default_spec_round_trips_through_json():
    spec = RobotSpec(robot_id="kuka-3", link_mass_scale=1.2, joint_damping=0.5, motor_strength=0.9)
    assert RobotSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert RobotSpec.from_dict({}) == RobotSpec()


def test_from_dict_unknown_key_names_it_and_lists_valid_keys():
    with pytest.raises(ValueError, match="'mass_scale'") as err:
        RobotSpec.from_dict({"mass_scale": 2.0})
    for key in ("robot_id", "model", "link_mass_scale", "joint_damping", "motor_strength"):
        assert key in str(err.value)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("link_mass_scale", 0.0, "> 0"),
        ("link_mass_scale", -1.0, "> 0"),
        ("link_mass_scale", math.nan, "finite"),
        ("motor_strength", 0.0, "> 0"),
        ("motor_strength", math.inf, "finite"),
        ("motor_strength", "1.0", "finite number"),
        ("joint_damping", -0.1, ">= 0"),
        ("joint_damping", 1000.0, "unstable"),
        ("link_mass_scale", True, "finite number"),
        ("robot_id", "", "non-empty"),
    ],
)
def test_spec_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        RobotSpec(**{field: value})


def test_unknown_model_is_an_unknown_name_error():
    with pytest.raises(UnknownNameError, match=r"unknown robot model 'ur5'; known: .*kuka_iiwa"):
        RobotSpec(model="ur5")
    with pytest.raises(ValueError, match=r"known: .*kuka_iiwa"):
        get_robot_model("ur5")


def test_kuka_model():
    model = get_robot_model("kuka_iiwa")
    assert model is ROBOT_MODELS["kuka_iiwa"]
    assert model.ee_link == 6 and model.num_joints == 7 and model.urdf == "kuka_iiwa/model.urdf"


def test_unknown_name_error_pickles_with_its_message():
    err = UnknownNameError.build("task family", "x", ["reach", "push"])
    assert str(err) == "unknown task family 'x'; known: push, reach"
    clone = pickle.loads(pickle.dumps(err))  # Ray ships exceptions between processes
    assert isinstance(clone, ValueError) and str(clone) == str(err)


def test_import_is_light_and_registration_idempotent():
    heavy = ("ray", "torch", "mlflow", "pybullet")
    code = f"import sys, fleet; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    repo_root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=repo_root)
    assert out.stdout.strip() == "[]"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(fleet)
    import gymnasium

    assert gymnasium.spec("metafleet/Reach-v0").max_episode_steps is None
