"""PEARL on the learner interface: transitions with next observations, buffers, resume, the numpy posterior."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
import torch

from learner.config import LearnerConfig, load_config
from learner.pearl import PEARL, first_episode
from learner.pearl_buffers import TaskBuffer, batch_transitions, concat_transitions
from policy import ContextEncoder, PolicySpec
from tests.fakes import ROBOT, point_env_factory, point_tasks
from tests.learner.pearl_driver import drive
from workers.batch import SampleRequest
from workers.pool import LocalWorkerPool

HORIZON = 10


def small_config(**overrides) -> LearnerConfig:
    fields = dict(algorithm="pearl", hidden_sizes=(16, 16), latent_dim=2, batch_size=16, context_size=8,
                  tasks_per_step=2, gradient_steps=3, buffer_size=100, device="cpu")
    return LearnerConfig(**{**fields, **overrides})


def test_next_observation_of_each_step_is_the_following_obs_then_final_obs():
    learner = PEARL(PolicySpec(2, 2), small_config(), seed=0)
    weights = learner.policy_weights("v")
    request = SampleRequest(point_tasks(1)[0], ROBOT, "v", 2, HORIZON, seed=3, context=(0.0, 0.0))
    [batch] = LocalWorkerPool(1, point_env_factory).sample([request], {"v": weights})
    data = batch_transitions(batch)
    assert len(data["rewards"]) == 2 * HORIZON
    np.testing.assert_array_equal(data["next_obs"][: HORIZON - 1], batch.obs[0, 1:])
    np.testing.assert_array_equal(data["next_obs"][HORIZON - 1], batch.final_obs[0])
    # The point env moves 0.1 * action: the final observation is the last one plus the last step.
    step = 0.1 * np.clip(batch.actions[0, -1], -1, 1)
    np.testing.assert_allclose(batch.final_obs[0], batch.obs[0, -1] + step, atol=1e-6)


def test_task_buffer_wraps_and_keeps_the_newest():
    buffer = TaskBuffer(1, 1, size=4)
    data = {"obs": np.arange(6.0)[:, None], "actions": np.zeros((6, 1)), "rewards": np.arange(6.0),
            "next_obs": np.zeros((6, 1))}
    buffer.add({k: v[:3] for k, v in data.items()})
    buffer.add({k: v[3:] for k, v in data.items()})
    assert buffer.count == 4 and sorted(buffer.all()["rewards"]) == [2.0, 3.0, 4.0, 5.0]
    buffer.add(data)  # more than fits at once: the newest four
    assert sorted(buffer.all()["rewards"]) == [2.0, 3.0, 4.0, 5.0]


def test_collect_fills_replay_and_context_and_ships_one_z_per_task():
    learner = PEARL(PolicySpec(2, 2), small_config(), seed=0)
    tasks = point_tasks(3)
    done = drive(learner.collect(tasks, 0, 1), LocalWorkerPool(1, point_env_factory), ROBOT, HORIZON, 0, 0)
    assert [phase.phase for phase, _ in done] == ["support", "query"]
    for phase, batches in done:
        assert len(phase.contexts) == 3 and all(len(z) == 2 for z in phase.contexts)
        assert [b.context.tolist() for b in batches] == [list(np.float32(phase.contexts[i])) for i in range(3)]
    for task in tasks:  # context: the prior episode; replay: prior and posterior episodes
        assert learner.context[task.task_id].count == HORIZON
        assert learner.replay[task.task_id].count == 2 * HORIZON
    metrics = learner.update()
    assert metrics["gradient_steps"] == 3 and np.isfinite(metrics["q_loss"])


def test_adaptation_conditions_round_k_on_k_context_episodes():
    learner = PEARL(PolicySpec(2, 2), small_config(), seed=0)
    pool, tasks = LocalWorkerPool(1, point_env_factory), point_tasks(2, 1, "test")
    plan = learner.adaptation(tasks, 3, "eval", 2)
    rng = np.random.default_rng(zlib.crc32(b"eval"))  # the evaluation's own z stream
    phases, batches = [plan.send(None)], []
    prior = tuple(tuple(map(float, ContextEncoder.sample(np.zeros(2), np.ones(2), rng))) for _ in tasks)
    assert phases[0].contexts == prior
    for _ in range(2):
        batches.append(pool.sample([SampleRequest(t, ROBOT, "eval", 2, HORIZON, 5, "eval", True, phases[-1].context(i))
                                    for i, t in enumerate(tasks)], phases[-1].weights_by_version()))
        phases.append(plan.send(batches[-1]))
    assert [p.measures for p in phases] == [(0,), (1,), (2,)] and all(p.episodes == 2 for p in phases)
    # Round k's z per task: a posterior sample given the first episode of each earlier round of that task.
    weights = learner.policy_weights("eval")
    for k in (1, 2):
        for i in range(2):
            context = concat_transitions([batch_transitions(first_episode(b[i])) for b in batches[:k]])
            assert len(context["rewards"]) == k * HORIZON
            assert phases[k].contexts[i] == learner.sample_posterior(weights, context, rng=rng)


def test_resume_continues_bitwise(tmp_path):
    pool, tasks = LocalWorkerPool(1, point_env_factory), point_tasks(4)
    learner = PEARL(PolicySpec(2, 2), small_config(), seed=0)
    drive(learner.collect(tasks, 0, 1), pool, ROBOT, HORIZON, 0, 0)
    learner.update()
    blob = io.BytesIO()
    torch.save(learner.state_dict(), blob)
    blob.seek(0)
    resumed = PEARL(PolicySpec(2, 2), small_config(), seed=123)
    resumed.load_state_dict(torch.load(blob))  # weights_only=True: plain data and tensors only
    for run in (learner, resumed):
        drive(run.collect(tasks, 1, 1), pool, ROBOT, HORIZON, 0, 1)
    a, b = learner.update(), resumed.update()
    assert a == b
    for key, value in learner.policy_weights("v").arrays.items():
        np.testing.assert_array_equal(value, resumed.policy_weights("v").arrays[key])


def test_fixed_alpha_is_never_stepped_and_tuned_alpha_is():
    pool, tasks = LocalWorkerPool(1, point_env_factory), point_tasks(2)
    fixed, tuned = PEARL(PolicySpec(2, 2), small_config(sac_alpha=0.3), seed=0), PEARL(PolicySpec(2, 2),
                                                                                       small_config(), seed=0)
    for learner in (fixed, tuned):
        drive(learner.collect(tasks, 0, 1), pool, ROBOT, HORIZON, 0, 0)
        learner.update()
    assert float(fixed.log_alpha.exp()) == pytest.approx(0.3) and not fixed.log_alpha.requires_grad
    assert float(tuned.log_alpha) != 0.0  # automatic tuning (the default) moved it from alpha = 1
    with pytest.raises(ValueError, match="sac_alpha"):
        load_config(data={"learner": {"algorithm": "pearl", "sac_alpha": 0}})


def test_reward_decoder_trains_the_encoder_and_resumes_bitwise():
    pool, tasks = LocalWorkerPool(1, point_env_factory), point_tasks(2)
    plain, learner = (PEARL(PolicySpec(2, 2), small_config(reward_decoder=w), seed=0) for w in (0.0, 1.0))
    for run in (plain, learner):  # same init, data and random streams: only the reward loss differs
        drive(run.collect(tasks, 0, 1), pool, ROBOT, HORIZON, 0, 0)
    assert "reward_loss" not in plain.update() and np.isfinite(learner.update()["reward_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(plain.policy.encoder.parameters(),
                                                     learner.policy.encoder.parameters()))
    blob = io.BytesIO()
    torch.save(learner.state_dict(), blob)
    blob.seek(0)
    resumed = PEARL(PolicySpec(2, 2), small_config(reward_decoder=1.0), seed=5)
    resumed.load_state_dict(torch.load(blob))
    for run in (learner, resumed):
        drive(run.collect(tasks, 1, 1), pool, ROBOT, HORIZON, 0, 1)
    assert learner.update() == resumed.update()


def test_pearl_config_validates_its_fields():
    assert load_config(data={"learner": {"algorithm": "pearl", "latent_dim": 3}}).learner.latent_dim == 3
    with pytest.raises(ValueError, match="context_size"):
        load_config(data={"learner": {"algorithm": "pearl", "context_size": 200, "buffer_size": 100}})
    with pytest.raises(ValueError, match="unknown key"):
        load_config(data={"learner": {"algorithm": "pearl", "latent_size": 3}})


def test_trial_rollouts_record_each_episodes_final_observation():
    from policy import make_policy
    from tests.fakes import PointEnv
    from workers.recurrent import rollout_trials

    weights = PEARL(PolicySpec(2, 2), small_config(), seed=0).policy_weights("v")
    out = rollout_trials([PointEnv(HORIZON), PointEnv(HORIZON)], make_policy(weights), {"goal": [0.3, 0.0]},
                         HORIZON, seed=1, trial_episodes=2, context=np.zeros(2, np.float32))
    assert out["final_obs"].shape == (4, 2)  # trial-major, like every other array
    step = 0.1 * np.clip(out["actions"][:, -1], -1, 1)
    np.testing.assert_allclose(out["final_obs"], out["obs"][:, -1] + step, atol=1e-6)
