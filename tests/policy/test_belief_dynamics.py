"""The belief policy's dynamics model (policy.belief.DynamicsTwin): its log-likelihood against hand numbers, the
numpy twin against the torch model, a filter that tells particles apart by the motion alone, and a policy
published without dynamics arrays behaving exactly as before."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from learner.belief_dynamics import DynamicsModel, dynamics_data
from policy import PolicySpec, PolicyWeights, make_policy
from policy.artifact import ArtifactError, check_schema
from policy.belief import STUDENT_NU, NumpyBeliefPolicy
from policy.spec import dynamics_input_dim
from tests.policy.test_belief_policy import ACT, OBS, belief_weights, run_steps


def with_dynamics(weights: PolicyWeights, scale=(0.1, 0.1), weight: float = 1.0) -> PolicyWeights:
    """`weights` + a hand-set dynamics model, delta = (0.5 z + 0.25 a_0, 0) for |z|, |a_0| < 10: hidden
    h = (relu(10 + z), relu(10 + a_0)), delta_0 = 0.5 h_0 + 0.25 h_1 - 7.5, delta_1 = 0."""
    spec = replace(weights.spec, dynamics_sizes=(2,))
    arrays = dict(weights.arrays)
    w0 = np.zeros((2, dynamics_input_dim(spec)), np.float32)  # input [obs (2), action (2), z (1)]
    w0[0, OBS + ACT] = 1.0  # z
    w0[1, OBS] = 1.0  # action 0
    arrays["dynamics.hidden.0.weight"], arrays["dynamics.hidden.0.bias"] = w0, np.array([10.0, 10.0], np.float32)
    arrays["dynamics.out.weight"] = np.array([[0.5, 0.25], [0.0, 0.0]], np.float32)
    arrays["dynamics.out.bias"] = np.array([-7.5, 0.0], np.float32)
    arrays["dynamics.scale"] = np.asarray(scale, np.float32)
    arrays["dynamics.weight"] = np.asarray([weight], np.float32)
    return PolicyWeights(spec, arrays, weights.version)


def test_the_dynamics_log_likelihood_equals_the_hand_computation():
    policy = NumpyBeliefPolicy(with_dynamics(belief_weights(), scale=(0.1, 0.2), weight=0.5))
    obs, action = np.array([[1.0, 2.0]]), np.array([[0.4, -0.3]])
    z = np.array([[[0.2], [-0.6]]])
    # delta_0 = 0.5 z + 0.25 a_0 : 0.2 and -0.2 ; delta_1 = 0
    assert np.allclose(policy.predict_delta(obs, action, z), [[[0.2, 0.0], [-0.2, 0.0]]], atol=1e-6)
    next_obs = obs + np.array([[0.3, 0.1]])  # obs_mean 0, obs_std 1: the normalised change is the change itself
    reward = np.array([0.2])  # the reward model says r = z: particle 0 explains it exactly
    got = policy.log_likelihood(obs, action, reward, next_obs, z)
    t = lambda r: -0.5 * (STUDENT_NU + 1) * np.log(1 + r * r / STUDENT_NU)  # noqa: E731
    reward_part = [0.0, t((0.2 + 0.6) / 0.05)]  # likelihood scale 0.05 (belief_weights' settings)
    dyn_part = [0.5 * (t((0.3 - 0.2) / 0.1) + t(0.1 / 0.2)), 0.5 * (t((0.3 + 0.2) / 0.1) + t(0.1 / 0.2))]
    assert np.allclose(got, [[reward_part[0] + dyn_part[0], reward_part[1] + dyn_part[1]]], atol=1e-6)


def test_numpy_dynamics_matches_the_torch_model():
    spec = PolicySpec(5, 3, (8,), "tanh", "belief", "concat", 2, model_sizes=(4,), dynamics_sizes=(16, 16))
    torch.manual_seed(0)
    model = DynamicsModel(dynamics_input_dim(spec), spec.dynamics_sizes, spec.obs_dim)
    rng = np.random.default_rng(1)
    arrays = {name: rng.normal(0, 0.3, shape).astype(np.float32) for name, shape in spec.weight_shapes().items()}
    arrays.update({f"dynamics.{k}": v.detach().numpy() for k, v in model.state_dict().items()})
    arrays["obs_mean"], arrays["obs_std"] = rng.normal(size=5).astype(np.float32), np.full(5, 2.0, np.float32)
    arrays["belief.settings"] = np.asarray([8, 1, 1.0, 0.1], np.float32)
    arrays["dynamics.scale"], arrays["dynamics.weight"] = np.full(5, 0.1, np.float32), np.ones(1, np.float32)
    policy = NumpyBeliefPolicy(PolicyWeights(spec, arrays, "t"))
    obs, act, nxt = rng.normal(size=(4, 5)) * 30, rng.normal(size=(4, 3)) * 8, rng.normal(size=(4, 5))
    z = rng.normal(size=(4, 6, 2))
    got = policy.predict_delta(obs, act, z)
    rows = np.concatenate([np.repeat(np.concatenate([obs, act, nxt], 1)[:, None], 6, 1), z], -1).reshape(24, -1)
    x, _ = dynamics_data(torch.as_tensor(rows, dtype=torch.float32), 5, 3, torch.as_tensor(arrays["obs_mean"]),
                         torch.as_tensor(arrays["obs_std"]))  # clipping included: obs far beyond OBS_CLIP
    want = model(x).detach().numpy().reshape(4, 6, 5)
    assert np.allclose(got, want, atol=1e-5)


def two_particle_filter(dynamics: bool) -> np.ndarray:
    """Two particles z = -0.5 and 0.5, a flat reward model (it says nothing about z), and motions made by
    z = 0.5: the posterior weight of each particle after 10 transitions."""
    weights = belief_weights(settings=(2, 1, 0.05, 0.2), reward_is_z=False)
    arrays = dict(weights.arrays)
    for name in ("model.hidden.0.weight", "model.out.weight"):
        arrays[name] = np.zeros_like(arrays[name])  # r_hat = the output bias, whatever z
    weights = PolicyWeights(weights.spec, arrays, "flat-reward")
    policy = NumpyBeliefPolicy(with_dynamics(weights) if dynamics else weights, recover=False)
    rng = np.random.default_rng(0)
    state = policy.initial_state(1, rng)
    state.particles[:] = np.array([[[-0.5], [0.5]]])
    obs, action = np.zeros((1, OBS)), np.array([[0.4, 0.0]])
    for _ in range(10):
        nxt = obs + np.array([[0.5 * 0.5 + 0.25 * 0.4, 0.0]])  # the truth, z = 0.5
        policy.observe(state, obs, action, np.zeros(1), nxt, np.ones(1, bool), rng)
        assert np.allclose(state.particles[0, :, 0], [-0.5, 0.5])  # 2 particles: the ESS never drops below 1
        obs = nxt
    w = np.exp(state.log_weights - state.log_weights.max())
    return w[0] / w[0].sum()


def test_the_filter_finds_the_particle_the_motion_explains_when_the_reward_cannot():
    with_dyn, without = two_particle_filter(dynamics=True), two_particle_filter(dynamics=False)
    assert with_dyn[1] > 0.99, with_dyn
    assert np.allclose(without, 0.5), without  # reward alone carries no information


def test_a_policy_without_dynamics_arrays_loads_and_acts_exactly_as_before():
    weights = belief_weights()
    assert not any(k.startswith("dynamics.") for k in weights.arrays) and "dynamics_sizes" not in weights.spec.to_dict()
    check_schema(weights.spec, weights.arrays)  # the published layout of every belief policy so far
    a, b = run_steps(make_policy(weights), [0.0] + [0.4] * 20), run_steps(make_policy(weights), [0.0] + [0.4] * 20)
    assert np.array_equal(a[0].particles, b[0].particles) and np.array_equal(a[1], b[1])
    assert np.allclose(a[0].mean()[:, 0], 0.4, atol=0.05)  # as test_belief_policy's convergence test
    with pytest.raises(ValueError, match="no dynamics model"):
        make_policy(weights).predict_delta(np.zeros((1, OBS)), np.zeros((1, ACT)), np.zeros((1, 2, 1)))


def test_the_schema_checks_the_dynamics_arrays():
    weights = with_dynamics(belief_weights())
    check_schema(weights.spec, weights.arrays)
    assert PolicySpec.from_dict(weights.spec.to_dict()) == weights.spec
    bad = {**weights.arrays, "dynamics.scale": np.ones(3, np.float32)}
    with pytest.raises(ArtifactError, match=r"dynamics\.scale"):
        check_schema(weights.spec, bad)
    missing = {k: v for k, v in weights.arrays.items() if k != "dynamics.weight"}
    with pytest.raises(ArtifactError, match="do not match"):
        check_schema(weights.spec, missing)
    with pytest.raises(ValueError, match="belong to a 'belief' policy"):
        PolicySpec(2, 2, dynamics_sizes=(4,))
