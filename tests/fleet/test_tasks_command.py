"""`fleet tasks`: families with description, parameters and robot kinds; robots with kind and model file."""

import json

from fleet.robots import ROBOT_MODELS
from fleet.tasks import FAMILIES
from metafleet.cli import main


def test_tasks_json_lists_every_family_and_robot(capsys):
    assert main(["tasks", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["families"]) == set(FAMILIES) and set(out["robots"]) == set(ROBOT_MODELS)
    reach = out["families"]["reach"]
    assert reach["params"] == ["goal"] and reach["robot_kinds"] == ["arm"] and "goal" in reach["description"]
    kuka = out["robots"]["kuka_iiwa"]
    assert kuka == {"kind": "arm", "model_file": "kuka_iiwa/model.urdf", "loader": "urdf", "joints": 7,
                    "description": ROBOT_MODELS["kuka_iiwa"].description}


def test_tasks_table(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "task parameters: goal; robots: arm" in out
    assert "kuka_iiwa    arm" in out and "kuka_iiwa/model.urdf" in out
