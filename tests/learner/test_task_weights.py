"""`learner.task_weights` reaches every gradient learner's update: weighting one task moves theta
differently than uniform weights, and weights equal for all tasks change nothing."""

import pytest
import torch

from learner.builder import make_learner
from learner.config import LearnerConfig
from tests.fakes import POINT_SPEC, ROBOT, point_env_factory, point_tasks
from workers.batch import SampleRequest
from workers.pool import LocalWorkerPool

TASKS = point_tasks(4, seed=3)


def batches(pool, learner, phase):
    weights = learner.weights_for(TASKS, "v")
    requests = [SampleRequest(t, ROBOT, w.version, 4, 10, 50 * phase + i)
                for i, (t, w) in enumerate(zip(TASKS, weights))]
    return pool.sample(requests, {w.version: w for w in weights})


def updated_params(algorithm: str, task_weights: dict) -> dict:
    torch.manual_seed(0)
    cfg = LearnerConfig(algorithm=algorithm, hidden_sizes=(16,), device="cpu", ppo_epochs=1, task_weights=task_weights)
    learner = make_learner(POINT_SPEC, cfg, TASKS)
    pool = LocalWorkerPool(env_factory=point_env_factory)
    learner.learn(batches(pool, learner, 1), batches(pool, learner, 2))
    return {k: v.detach().clone() for k, v in learner.policy.named_parameters()}


@pytest.mark.parametrize("algorithm", ["maml", "metasgd", "reptile", "mtppo"])
def test_task_weights_change_the_update_and_uniform_weights_do_not(algorithm):
    uniform = updated_params(algorithm, {})
    heavy = updated_params(algorithm, {TASKS[0].task_id: 10.0})
    same = updated_params(algorithm, {"point": 3.0})  # by family: every task weighted alike
    assert any(not torch.equal(uniform[k], heavy[k]) for k in uniform)
    for k in uniform:
        torch.testing.assert_close(uniform[k], same[k], rtol=1e-5, atol=1e-6)
