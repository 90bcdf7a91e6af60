"""`fleet eval` (deploy.jobs.evaluate_model) of an in-context kind: a registered RMA policy is evaluated from its
numpy weights as its learner evaluates it (trials of rounds episodes, learner.published.PublishedInContext), on
the fleet's held-out robots (split: test) as training's held-out evaluation - not on the first training robot."""

from types import SimpleNamespace

import numpy as np
import pytest

import deploy.jobs as jobs
from fleet.fleetspec import load_fleet_file
from learner.published import PublishedInContext
from policy import PolicySpec, PolicyWeights
from policy.artifact import PolicyArtifact
from tests.deploy.conftest import ROOT

GAINS = str(ROOT / "configs/fleets/kuka-gains.yaml")
RMA = PolicySpec(23, 7, (16,), conditioning="film", context_dim=2, kind="rma", model_sizes=(8,), privileged_dim=12,
                 history=3, encoder_sizes=(4,))


def rma_artifact() -> PolicyArtifact:
    rng = np.random.default_rng(0)
    arrays = {k: rng.normal(0, 0.3, shape).astype(np.float32) for k, shape in RMA.weight_shapes().items()}
    arrays.update(obs_mean=np.zeros(23, np.float32), obs_std=np.ones(23, np.float32),
                  **{"rma.mode": np.ones(1, np.float32)})
    spaces = {"observation": {"shape": [23], "low": [-10.0] * 23, "high": [10.0] * 23},
              "action": {"shape": [7], "low": [-1.0] * 7, "high": [1.0] * 7}}
    fleet = {"family": "robot_reach", "fleet_file": GAINS, "num_train_tasks": 6, "num_test_tasks": 6, "horizon": 4}
    learner = {"algorithm": "rma", "robot_params": ["joint_gains"], "hidden_sizes": [16],
               "rma": {"history": 3, "latent": 2}}
    return PolicyArtifact.build(PolicyWeights(RMA, arrays, "kinds-rma/1"), spaces=spaces, fleet=fleet,
                                learner=learner, algorithm="rma")


@pytest.fixture
def captured(monkeypatch):
    """evaluate_model on the hand-built artifact (as if from the registry), its protocol and learner recorded."""
    artifact, seen = rma_artifact(), {}
    monkeypatch.setattr(jobs, "Registry", lambda: SimpleNamespace(load=lambda uri: artifact))
    evaluate = jobs.evaluate

    def recording(learner, pool, protocol):
        seen.update(learner=learner, protocol=protocol)
        return evaluate(learner, pool, protocol)

    monkeypatch.setattr(jobs, "evaluate", recording)
    return seen


def test_fleet_eval_runs_an_rma_policy_in_trials_on_the_held_out_robots(captured):
    result = jobs.evaluate_model("models:/kinds-rma/1", steps=(0, 1), episodes=1, num_tasks=3, backend="local",
                                 num_workers=1)
    held_out = load_fleet_file(GAINS).test
    assert isinstance(captured["learner"], PublishedInContext) and captured["learner"].algorithm == "rma"
    assert captured["protocol"].robots == held_out[:3] and all(r.joint_gains for r in held_out[:3])
    assert result.steps == [0, 1] and len(result.task_ids) == 3
    assert all(np.isfinite(result.returns[k]).all() for k in (0, 1))


def test_training_tasks_run_on_the_first_training_robot_as_training_evaluates_them(captured):
    jobs.evaluate_model("models:/kinds-rma/1", split="train", steps=(0,), episodes=1, num_tasks=2, backend="local",
                        num_workers=1)
    assert captured["protocol"].robots == (load_fleet_file(GAINS).train[0],) * 2
