"""RL^2: trial data layout, PPO over trials, in-context evaluation, no gradient adaptation, state."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from learner.builder import make_learner
from learner.config import LearnerConfig
from learner.evaluation import evaluate as meta_evaluate
from learner.rl2 import RL2, InContextLearnerError
from policy.artifact import PolicyArtifact
from tests.fakes import POINT_SPEC, ROBOT, point_env_factory, point_protocol, point_tasks
from workers.batch import SampleRequest
from workers.pool import LocalWorkerPool

TASKS = point_tasks(4, seed=3)
HORIZON = 10



def config(**overrides) -> LearnerConfig:
    base = {"algorithm": "rl2", "outer_lr": 0.01, "init_std": 0.5, "device": "cpu", "rl2_hidden": 16,
            "trial_episodes": 2, "ppo_epochs": 2}
    return LearnerConfig(**{**base, **overrides})


@pytest.fixture
def pool():
    return LocalWorkerPool(env_factory=point_env_factory)


def sample(learner, pool, seed: int, episodes: int = 4, phase: str = "support"):
    weights = learner.weights_for(TASKS, f"v{seed}")
    requests = [SampleRequest(t, ROBOT, w.version, episodes, HORIZON, seed + i, phase,
                              trial_episodes=learner.trial_episodes) for i, (t, w) in enumerate(zip(TASKS, weights))]
    return pool.sample(requests, {w.version: w for w in weights})


def iterate(learner, pool, it: int) -> dict:
    support = sample(learner, pool, 100 * it)
    adapted = learner.adapt_for_training(support, f"it{it}")
    assert [w.version for w in adapted] == [f"it{it}"] * len(TASKS)  # theta for every task
    query = sample(learner, pool, 100 * it + 50, phase="query")
    metrics = learner.learn(support, query)
    learner.observe([*support, *query])
    return metrics


def test_rl2_is_a_gru_learner_with_trials():
    learner = make_learner(POINT_SPEC, config(trial_episodes=3))
    assert isinstance(learner, RL2) and learner.trial_episodes == 3
    weights = learner.policy_weights("v")
    assert weights.spec.kind == "rl2" and weights.spec.hidden_sizes == (16,)
    assert weights.arrays["gru.weight_ih_l0"].shape == (48, 2 + 2 + 2)


def test_prepare_lays_episodes_out_as_trials(pool):
    learner = make_learner(POINT_SPEC, config())
    batches = sample(learner, pool, 0)
    data = learner.prepare(batches)
    assert data["obs"].shape == (4, 2, 2 * HORIZON, 2) and data["adv"].shape == (4, 2, 2 * HORIZON)
    b = batches[1]
    np.testing.assert_array_equal(data["obs"][1, 1, HORIZON:].numpy(), b.obs[3])  # trial 1, episode 1
    np.testing.assert_array_equal(data["actions"][1, 0, :HORIZON].numpy(), b.actions[0])
    wrong = dataclasses.replace(batches[0], trial_episodes=1)
    with pytest.raises(ValueError, match="whole trials of 2 episodes"):
        learner.prepare([wrong])


def test_update_trains_the_gru_and_keeps_log_probs_consistent(pool):
    torch.manual_seed(0)
    learner = make_learner(POINT_SPEC, config())
    before = {k: v.detach().clone() for k, v in learner.params().items()}
    batches = sample(learner, pool, 0)
    data = learner.prepare(batches)
    with torch.no_grad():
        _, kls = learner.trial_terms(data)
    assert kls.abs().max() < 1e-5  # torch recomputes the numpy behaviour log-probs over whole trials
    metrics = learner.learn(batches, sample(learner, pool, 7, phase="query"))
    assert all(np.isfinite(v) for v in metrics.values())
    assert (learner.params()["gru.weight_hh_l0"] - before["gru.weight_hh_l0"]).abs().max() > 0


def test_adapt_is_refused_with_a_clear_message(pool):
    learner = make_learner(POINT_SPEC, config())
    with pytest.raises(InContextLearnerError, match="adapts in context"):
        learner.adapt(sample(learner, pool, 0), "x")


def test_evaluate_in_context_reports_episode_k_as_step_k(pool):
    learner = make_learner(POINT_SPEC, config())
    protocol = point_protocol(TASKS, episodes=3, horizon=HORIZON, seed=5, steps=(0, 2))
    result = meta_evaluate(learner, pool, protocol)
    assert result.steps == [0, 2] and set(result.returns) == {0, 2}
    assert result.env_steps == len(TASKS) * 3 * 3 * HORIZON  # 3 trials of max(steps)+1 = 3 episodes per task
    again = meta_evaluate(learner, pool, protocol)
    assert again.returns == result.returns and again.successes == result.successes
    # Step k is episode k of each trial: recompute task 0's figures from the same request.
    from learner.seeds import derive_seed

    weights = learner.policy_weights("eval/theta")
    [batch] = pool.sample([SampleRequest(TASKS[0], ROBOT, weights.version, 9, HORIZON,
                                         derive_seed(5, 0, 11), "eval", trial_episodes=3)],
                          {weights.version: weights})
    per_episode = batch.episode_returns().reshape(3, 3)
    assert result.returns[0][0] == pytest.approx(per_episode[:, 0].mean())
    assert result.returns[2][0] == pytest.approx(per_episode[:, 2].mean())
    assert len(result.table().splitlines()) == 3  # header + one row per reported step


def test_state_dict_round_trip(pool):
    torch.manual_seed(0)
    learner = make_learner(POINT_SPEC, config())
    iterate(learner, pool, 0)
    other = make_learner(POINT_SPEC, config())
    other.load_state_dict(copy.deepcopy(learner.state_dict()))
    for name, value in learner.params().items():
        torch.testing.assert_close(other.params()[name], value)
    iterate(learner, pool, 1)
    iterate(other, pool, 1)
    for name, value in learner.params().items():
        torch.testing.assert_close(other.params()[name], value)


def test_published_gru_policy_loads_for_eval_and_refuses_fleet_adapt(tmp_path):
    """`fleet eval` builds the learner from the artifact's spec; `fleet adapt` says why it does not apply."""
    from types import SimpleNamespace

    from deploy.adapt import adapt_on_robot

    learner = make_learner(POINT_SPEC, config())
    PolicyArtifact.build(learner.policy_weights("pub"), algorithm="rl2").save(tmp_path / "policy")
    artifact = PolicyArtifact.load(tmp_path / "policy")
    again = make_learner(artifact.weights.spec, config())
    again.policy.load_weights(artifact.weights)
    for name, value in learner.params().items():
        torch.testing.assert_close(again.params()[name], value)
    registry = SimpleNamespace(resolve=lambda uri: SimpleNamespace(sha256=None, uri=uri),  # a local directory
                               download=lambda resolved: resolved.uri)
    with pytest.raises(ValueError, match=r"adapts in its hidden state.*fleet eval"):
        adapt_on_robot(str(tmp_path / "policy"), "sim:kuka-1", registry=registry)


@pytest.mark.slow
def test_rl2_training_improves_trial_return(pool):
    torch.manual_seed(0)
    learner = make_learner(POINT_SPEC, config(outer_lr=0.02))

    def evaluate():
        result = meta_evaluate(learner, pool, point_protocol(TASKS, episodes=4, horizon=HORIZON, seed=9, steps=(0, 1)))
        return np.mean([np.mean(result.returns[k]) for k in (0, 1)])

    start = evaluate()
    for it in range(15):
        iterate(learner, pool, it)
    assert evaluate() > start + 0.5
