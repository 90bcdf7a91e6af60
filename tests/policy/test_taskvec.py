"""policy.taskvec: the one task-vector encoder, shared by training (learner.conditioning) and the robot."""

import json

import numpy as np
import pytest

from fleet.tasks import Task
from learner.conditioning import TaskEncoder
from policy.taskvec import TaskVectorEncoder, flatten_params, mixture_default

TRAIN = [Task("reach", f"reach/train/{i}", {"goal": [0.5 + 0.05 * i, 0.1 * i - 0.2, 0.35 + 0.01 * i]})
         for i in range(5)]
HELD_OUT = Task("reach", "reach/test/0", {"goal": [0.61, -0.03, 0.42]})


@pytest.mark.parametrize("encoding", ["params", "onehot"])
def test_the_manifest_round_trip_builds_what_training_builds(encoding):
    learner_side = TaskEncoder(encoding, TRAIN)
    manifest = json.loads(json.dumps(learner_side.to_manifest()))  # what the artifact carries (strict JSON)
    robot_side = TaskVectorEncoder.from_manifest(manifest)
    for task in [*TRAIN, HELD_OUT]:
        # the robot knows a task by its params only (no task id): the vectors must still be identical
        np.testing.assert_array_equal(robot_side.encode(task.params, task.family),
                                      np.asarray(learner_side.encode(task)))


def test_params_are_standardised_with_the_training_tasks_statistics():
    encoder = TaskVectorEncoder.from_tasks("params", [(t.family, t.task_id, t.params) for t in TRAIN])
    table = np.asarray([flatten_params(t.params) for t in TRAIN])
    expected = (np.asarray(HELD_OUT.params["goal"]) - table.mean(0)) / table.std(0)
    np.testing.assert_allclose(encoder.encode(HELD_OUT.params), expected)
    with pytest.raises(ValueError, match="has 2 numeric params; the training tasks had 3"):
        encoder.encode({"goal": [0.6, 0.1]})


def test_onehot_picks_the_training_task_and_spreads_a_held_out_one_uniformly():
    encoder = TaskVectorEncoder.from_tasks("onehot", [(t.family, t.task_id, t.params) for t in TRAIN])
    np.testing.assert_array_equal(encoder.encode(dict(TRAIN[3].params)), np.eye(5)[3])
    np.testing.assert_array_equal(encoder.encode(HELD_OUT.params), np.full(5, 0.2))
    assert encoder.training_index(TRAIN[3].params, family="push") is None  # another family's task


def test_bad_manifests_are_named():
    with pytest.raises(ValueError, match="lacks 'train_tasks'"):
        TaskVectorEncoder.from_manifest({"encoding": "params", "mean": [0.0], "std": [1.0]})
    good = TaskEncoder("params", TRAIN).to_manifest()
    with pytest.raises(ValueError, match="positive std"):
        TaskVectorEncoder.from_manifest({**good, "std": [0.0, 1.0, 1.0]})
    with pytest.raises(ValueError, match="says dim 4 but encodes to 3"):
        TaskVectorEncoder.from_manifest({**good, "dim": 4})


def test_mixture_default_is_the_heaviest_family():
    assert mixture_default({"velocity": 1.0, "direction": 2.0}) == "direction"
    assert mixture_default({"velocity": 1.0, "direction": 1.0}) == "direction"  # ties: sorted name
    assert mixture_default("reach") == "reach" and mixture_default(None) is None
