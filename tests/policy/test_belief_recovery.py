"""The belief's recovery from a confident wrong guess (policy.belief, `recover`): the prior's share of the mixture
belief against hand numbers, a tiny belief that the evidence contradicts recovers (and stays stuck without the
fix), a confident right belief is left alone (bit for bit the belief without the fix), and artifacts with the 4
original settings still load and recover."""

from __future__ import annotations

import numpy as np
import pytest

from policy import make_policy
from policy.artifact import PolicyArtifact
from policy.belief import RECOVERY_HAZARD, NumpyBeliefPolicy, prior_share
from tests.policy.test_belief_policy import ACT, OBS, belief_weights


def run(policy: NumpyBeliefPolicy, rewards: list[float], trials: int = 3, seed: int = 0):
    """Feed one reward per step (the toy task model says r = z: a reward of x is evidence for z = x)."""
    rng = np.random.default_rng(seed)
    state = policy.initial_state(trials, rng)
    obs, prev_action = np.zeros((trials, OBS), np.float32), np.zeros((trials, ACT), np.float32)
    for r in rewards:
        prev_action, _, state = policy.sample_step(obs, prev_action, np.full(trials, r, np.float32),
                                                   np.zeros(trials, np.float32), state, rng, deterministic=True)
    return state


def test_prior_share_against_hand_numbers():
    # two equally weighted particles that explain the reward with likelihood 0.01 each: p_belief = 0.01;
    # probes with likelihoods 1 and 0.5: p_prior = 0.75; hazard 0.01:
    # share = 0.01 * 0.75 / (0.99 * 0.01 + 0.01 * 0.75) = 0.0075 / 0.0174
    share = prior_share(np.zeros((1, 2)), np.log([[0.01, 0.01]]), np.log([[1.0, 0.5]]), 0.01)
    assert share[0] == pytest.approx(0.0075 / 0.0174, rel=1e-9)
    # the particles' weights count: all weight on the particle that explains it (likelihood 1)
    share = prior_share(np.array([[0.0, -np.inf]]), np.log([[1.0, 1e-6]]), np.log([[1.0, 0.5]]), 0.01)
    assert share[0] == pytest.approx(0.0075 / (0.99 + 0.0075), rel=1e-9)


def test_a_contradicted_confident_belief_recovers_and_stays_stuck_without_the_fix():
    evidence = [0.0] + [0.4] * 30  # a confident belief at z = 0.4 ...
    contradiction = [-0.6] * 10  # ... then every reward says z = -0.6
    for recover, near in ((False, 0.4), (True, -0.6)):
        policy = NumpyBeliefPolicy(belief_weights(), recover=recover)
        confident = run(policy, evidence)
        assert np.allclose(confident.mean()[:, 0], 0.4, atol=0.02) and (confident.std()[:, 0] < 0.02).all()
        state = run(NumpyBeliefPolicy(belief_weights(), recover=recover), evidence + contradiction)
        assert np.allclose(state.mean()[:, 0], near, atol=0.03), (recover, state.mean())
        assert (state.std()[:, 0] < 0.05).all()  # confident again: on the truth with the fix, on 0.4 without


def test_a_confident_right_belief_is_left_alone():
    policy = NumpyBeliefPolicy(belief_weights())
    state = run(policy, [0.0] + [0.4] * 60)
    assert policy.recoveries == 0  # rewards the belief explains never look like a contradiction
    assert np.allclose(state.mean()[:, 0], 0.4, atol=0.02) and (state.std()[:, 0] < 0.02).all()


def test_where_recovery_never_fires_the_trial_is_the_one_without_it():
    # the probes draw from a spawned stream: the rollout's own stream, and so every action, is untouched
    with_fix, without = NumpyBeliefPolicy(belief_weights()), NumpyBeliefPolicy(belief_weights(), recover=False)
    a, b = run(with_fix, [0.0] + [0.4] * 40), run(without, [0.0] + [0.4] * 40)
    assert with_fix.recoveries == 0
    assert np.array_equal(a.particles, b.particles) and np.array_equal(a.z, b.z)


def test_an_artifact_with_the_original_four_settings_loads_and_recovers(tmp_path):
    weights = belief_weights()
    assert weights.arrays["belief.settings"].shape == (4,)  # the layout every published belief policy has
    digest = PolicyArtifact.build(weights, kind="meta-policy", family="reach").save(tmp_path / "policy")
    loaded = PolicyArtifact.load(tmp_path / "policy", expected_digest=digest)
    policy = make_policy(loaded.weights)
    assert isinstance(policy, NumpyBeliefPolicy) and policy.recover  # the fix is on for what robots load
    state = run(policy, [0.0] + [0.4] * 30 + [-0.6] * 10)
    assert np.allclose(state.mean()[:, 0], -0.6, atol=0.03)
    assert RECOVERY_HAZARD < 0.05  # a small prior share: a right belief loses next to nothing to the prior
