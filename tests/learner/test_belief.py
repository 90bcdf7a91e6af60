"""The task-inference learner (learner/belief.py) on the goal-hidden point task: trained with the goal given, it
must find hidden goals from rewards alone, close to the oracle (the same policy given the goal), and clearly
better than the same policy whose belief learns nothing (a flat likelihood): a learner that does not infer
fails this test. Also: the loop's accounting, the published policy kind, the oracle yardstick, resume."""

from __future__ import annotations

import threading
from copy import deepcopy

import numpy as np
import pytest
import torch

from learner.belief import BeliefLearner, OracleLearner, transitions
from learner.config import LearnerConfig
from learner.evaluation import evaluate
from tests.fakes import POINT_SPEC, drive_iteration, point_protocol, point_tasks
from workers.pool import LocalWorkerPool

HORIZON = 20


def config(**overrides) -> LearnerConfig:
    base = dict(algorithm="belief", hidden_sizes=(32, 32), outer_lr=3e-3, init_std=0.5, ppo_epochs=5,
                model_sizes=(64, 64), model_steps=100, model_batch=256, belief_particles=128, device="cpu")
    return LearnerConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def trained():
    from tests.fakes import point_env_factory

    torch.manual_seed(0)
    tasks = point_tasks(20, seed=0)
    learner = BeliefLearner(POINT_SPEC, config(), tasks)
    pool = LocalWorkerPool(1, point_env_factory)
    rng = np.random.default_rng(0)
    for it in range(40):
        batch = [tasks[i] for i in rng.choice(len(tasks), 8, replace=False)]
        metrics, _ = drive_iteration(learner, pool, batch, it, episodes=6, horizon=HORIZON)
    yield learner, pool, metrics
    pool.close()


def summary(learner, pool, rounds=2):
    protocol = point_protocol(point_tasks(12, seed=99, split="test"), episodes=4, horizon=HORIZON, seed=5,
                              steps=tuple(range(rounds)), deterministic=True)
    return evaluate(learner, pool, protocol).summary()


def test_training_fits_the_task_model_and_publishes_a_belief_policy(trained):
    learner, _, metrics = trained
    assert np.isfinite(metrics["model_loss"]) and metrics["model_error"] < 0.05, metrics
    weights = learner.policy_weights("v")
    assert weights.spec.kind == "belief" and weights.spec.context_dim == 2
    assert learner.actor_weights("v").spec.kind == "mlp"  # what training episodes act with (the goal given)


def test_hidden_goals_are_found_from_rewards_close_to_the_oracle(trained):
    learner, pool, _ = trained
    inferred, oracle = summary(learner, pool), summary(learner.oracle(), pool)
    assert isinstance(learner.oracle(), OracleLearner)
    blind = learner.config.model_copy(update={"belief_likelihood": 1e6})  # a belief that never moves
    ablated = BeliefLearner(POINT_SPEC, blind, learner.train_tasks)
    ablated.load_state_dict(learner.state_dict())
    no_inference = summary(ablated, pool)
    # The oracle walks straight to the goal (success ~1, return ~ -0.5); without inference the policy walks to
    # random guesses (return ~ -8, success ~0); with inference it explores in the first episode and knows the goal
    # by its end (measured: success 0.9-1.0 in rounds 0 and 1, round-1 return ~ -0.6).
    assert oracle[0]["success_mean"] >= 0.9, oracle
    assert no_inference[1]["success_mean"] < 0.3, no_inference
    assert inferred[1]["return_mean"] > no_inference[1]["return_mean"] + 3.0, (inferred, no_inference)
    assert inferred[1]["success_mean"] >= 0.9 and inferred[1]["return_mean"] > oracle[1]["return_mean"] - 1.0, inferred
    assert inferred[0]["success_mean"] >= 0.7, inferred


def test_transitions_pair_each_step_with_its_next_observation_and_task_vector(trained):
    from workers.batch import Batch

    obs = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    from tests.fakes import ROBOT

    batch = Batch(task=point_tasks(1)[0], robot=ROBOT, policy_version="v", phase="support", obs=obs,
                  actions=np.ones((2, 3, 2), np.float32),
                  logp=np.zeros((2, 3), np.float32), rewards=np.arange(6, dtype=np.float32).reshape(2, 3),
                  mask=np.array([[1, 1, 1], [1, 1, 0]], np.float32), success=np.zeros(2, bool),
                  final_obs=np.full((2, 2), -1.0, np.float32))
    rows, rewards = transitions(batch, (0.5, 0.25))
    assert rows.shape == (5, 2 + 2 + 2 + 2) and rewards.tolist() == [0, 1, 2, 3, 4]
    assert rows[0, 4:6].tolist() == obs[0, 1].tolist() and rows[2, 4:6].tolist() == [-1.0, -1.0]
    assert (rows[:, 6:] == [0.5, 0.25]).all()


def test_state_round_trips_for_resume(trained):
    learner, _, _ = trained
    copy = BeliefLearner(POINT_SPEC, learner.config, learner.train_tasks)
    copy.load_state_dict(deepcopy(learner.state_dict()))  # as from a file: torch shares loaded optimiser tensors
    a, b = learner.policy_weights("v").arrays, copy.policy_weights("v").arrays
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert copy.replay.count == learner.replay.count
    # the task model's own stream and optimiser came along: further fitting stays in step
    assert copy.fit_model(5) == learner.fit_model(5)


def test_a_published_belief_policy_evaluates_as_its_learner_does(trained):
    """`fleet eval` of a registered belief policy (learner.published.PublishedInContext: numpy weights only)
    measures exactly what the learner's own evaluation measures."""
    from learner.published import PublishedInContext

    learner, pool, _ = trained
    published = PublishedInContext(learner.policy_weights("eval/belief"))
    assert published.algorithm == "belief" and summary(published, pool) == summary(learner, pool)
    with pytest.raises(ValueError, match=r"in-context policies of kinds \['belief', 'rma'\], got kind 'mlp'"):
        PublishedInContext(learner.actor_weights("v"))


def run_iterations(background: bool, iterations: int = 3) -> BeliefLearner:
    from tests.fakes import point_env_factory

    torch.manual_seed(3)
    tasks = point_tasks(8, seed=1)
    learner = BeliefLearner(POINT_SPEC, config(model_background=background, model_steps=30), tasks)
    with LocalWorkerPool(1, point_env_factory) as pool:
        for it in range(iterations):
            drive_iteration(learner, pool, tasks[:4], it, episodes=2, horizon=HORIZON)
    return learner


def test_the_background_model_fit_gives_exactly_the_inline_result():
    """The fit runs beside the next collection (`model_background`) yet draws from its own stream and is waited
    for before anything reads the model: the published weights and the checkpoint equal the inline fit's."""
    background, inline = run_iterations(True), run_iterations(False)
    assert background.fitting is not None  # the last iteration's fit was left running
    a, b = background.policy_weights("v").arrays, inline.policy_weights("v").arrays
    assert background.fitting is None  # publishing waited for it
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert background.model_loss == inline.model_loss and np.isfinite(inline.model_loss)
    sa, sb = background.state_dict(), inline.state_dict()
    assert sa["model_rng"] == sb["model_rng"] and sa["numpy_rng"] == sb["numpy_rng"]


def test_a_failed_background_fit_is_raised_where_the_model_is_next_needed():
    learner = run_iterations(True, iterations=1)
    learner.settle_model()

    def broken(steps, norm):
        raise FloatingPointError("injected")

    learner.fit_model = broken
    learner.fitting = threading.Thread(target=learner._fit_in_background, args=(1, None))
    learner.fitting.start()
    with pytest.raises(RuntimeError, match=r"background fit failed.*injected"):
        learner.policy_weights("v")
    assert learner.fitting is None
