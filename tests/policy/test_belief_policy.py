"""The numpy task-inference policy (policy.belief): its task model matches the torch twin, its particle belief
converges on the task that explains the rewards, it acts with the z it believes, and it ignores transitions that
do not belong to one episode (an episode's first step, a masked step)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learner.belief import TaskModel
from policy import PolicySpec, PolicyWeights, make_policy
from policy.belief import NumpyBeliefPolicy
from policy.spec import BELIEF_SETTINGS as SETTINGS
from policy.spec import model_input_dim

OBS, ACT, Z = 2, 2, 1


def belief_weights(settings=(128, 1, 0.05, 0.2), reward_is_z: bool = True, seed: int = 0) -> PolicyWeights:
    """A belief policy over a 1-d z whose task model says r = z (whatever the transition), and whose actor's
    mean action is (z, -z): what it believes is what it does."""
    spec = PolicySpec(OBS, ACT, (4,), "tanh", "belief", "concat", Z, model_sizes=(3,))
    rng = np.random.default_rng(seed)
    arrays = {name: rng.normal(0, 0.3, shape).astype(np.float32) for name, shape in spec.weight_shapes().items()}
    arrays["obs_mean"], arrays["obs_std"] = np.zeros(OBS, np.float32), np.ones(OBS, np.float32)
    # actor: hidden = tanh(z * [1, 0, 0, 0]) ~ z for small z; head maps it to (z, -z) / tanh'(0) = 1
    arrays["hidden.0.weight"] = np.zeros((4, OBS + Z), np.float32)
    arrays["hidden.0.weight"][0, OBS] = 1.0
    arrays["hidden.0.bias"] = np.zeros(4, np.float32)
    arrays["mean_head.weight"] = np.zeros((ACT, 4), np.float32)
    arrays["mean_head.weight"][:, 0] = [1.0, -1.0]
    arrays["mean_head.bias"] = np.zeros(ACT, np.float32)
    if reward_is_z:  # relu(z + 10) - 10 = z on the prior box
        w0 = np.zeros((3, model_input_dim(spec)), np.float32)
        w0[0, -1] = 1.0
        arrays["model.hidden.0.weight"], arrays["model.hidden.0.bias"] = w0, np.array([10.0, 0, 0], np.float32)
        arrays["model.out.weight"] = np.array([[1.0, 0, 0]], np.float32)
        arrays["model.out.bias"] = np.array([-10.0], np.float32)
    arrays["belief.low"], arrays["belief.high"] = np.array([-1.0], np.float32), np.array([1.0], np.float32)
    arrays["belief.settings"] = np.asarray(settings, np.float32)
    assert len(settings) == len(SETTINGS)
    return PolicyWeights(spec, arrays, "test")


def run_steps(policy, rewards, trials: int = 3, seed: int = 0, dones=None):
    rng = np.random.default_rng(seed)
    state = policy.initial_state(trials, rng)
    obs = np.zeros((trials, OBS), np.float32)
    prev_action, actions = np.zeros((trials, ACT), np.float32), None
    for t, r in enumerate(rewards):
        done = np.full(trials, 0.0 if dones is None else dones[t], np.float32)
        actions, _, state = policy.sample_step(obs, prev_action, np.full(trials, r, np.float32), done, state, rng,
                                               deterministic=True)
        prev_action = actions
    return state, actions


def test_make_policy_builds_the_belief_policy_and_the_spec_round_trips():
    weights = belief_weights()
    assert isinstance(make_policy(weights), NumpyBeliefPolicy)
    spec = weights.spec
    assert PolicySpec.from_dict(spec.to_dict()) == spec
    assert "model_sizes" not in PolicySpec(2, 2).to_dict()  # other kinds' manifests are unchanged


def test_belief_converges_on_the_task_that_explains_the_rewards_and_acts_on_it():
    policy = make_policy(belief_weights())
    state, actions = run_steps(policy, [0.0] + [0.4] * 30)
    assert np.allclose(state.mean()[:, 0], 0.4, atol=0.05), state.mean()
    assert (state.std()[:, 0] < 0.1).all()
    assert np.allclose(actions[:, 0], np.tanh(state.z[:, 0]), atol=1e-5)  # acts with the z it drew
    assert np.allclose(actions[:, 0], np.tanh(0.4), atol=0.06)


def test_without_evidence_the_belief_stays_at_the_prior():
    policy = make_policy(belief_weights())
    state, _ = run_steps(policy, [0.4] * 12, dones=[1.0] * 12)  # every step starts an episode: nothing observed
    assert abs(float(state.mean().mean())) < 0.2 and (state.std()[:, 0] > 0.45).all()


def test_a_masked_step_is_not_evidence():
    policy = make_policy(belief_weights())
    rng = np.random.default_rng(0)
    state = policy.initial_state(2, rng)
    obs = np.zeros((2, OBS), np.float32)
    policy.sample_step(obs, np.zeros((2, ACT)), np.zeros(2), np.zeros(2), state, rng)
    before = state.log_weights.copy()
    # a masked step: the rollout zeroes the previous action and reward of an env whose episode ended
    policy.sample_step(obs, np.zeros((2, ACT)), np.zeros(2), np.zeros(2), state, rng)
    assert np.array_equal(state.log_weights, before)


def test_numpy_task_model_matches_the_torch_twin():
    spec = PolicySpec(5, 3, (8,), "tanh", "belief", "concat", 2, model_sizes=(16, 16))
    torch.manual_seed(0)
    model = TaskModel(model_input_dim(spec), spec.model_sizes)
    rng = np.random.default_rng(1)
    arrays = {name: rng.normal(0, 0.3, shape).astype(np.float32) for name, shape in spec.weight_shapes().items()}
    arrays.update({f"model.{k}": v.detach().numpy() for k, v in model.state_dict().items()})
    arrays["obs_mean"], arrays["obs_std"] = rng.normal(size=5).astype(np.float32), np.full(5, 2.0, np.float32)
    arrays["belief.settings"] = np.asarray([8, 1, 1.0, 0.1], np.float32)
    policy = NumpyBeliefPolicy(PolicyWeights(spec, arrays, "t"))
    obs, act, nxt = rng.normal(size=(4, 5)), rng.normal(size=(4, 3)), rng.normal(size=(4, 5))
    z = rng.normal(size=(4, 6, 2))
    got = policy.predict_reward(obs, act, nxt, z)
    norm = lambda x: (x - arrays["obs_mean"]) / arrays["obs_std"]  # noqa: E731
    rows = np.concatenate([np.repeat(np.concatenate([norm(obs), act, norm(nxt)], 1)[:, None], 6, 1), z], -1)
    want = model(torch.as_tensor(rows, dtype=torch.float32)).detach().numpy()
    assert np.allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("settings", [(1, 1, 0.1, 0.1), (16, 1, 0.0, 0.1), (16, 1, 0.1, -1.0)])
def test_bad_settings_are_refused(settings):
    with pytest.raises(ValueError, match="bad settings"):
        NumpyBeliefPolicy(belief_weights(settings))
