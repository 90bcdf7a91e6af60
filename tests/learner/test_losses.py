"""RL maths against numbers computed by hand."""

import math

import pytest
import torch

from learner.losses import (
    discounted_returns,
    gae,
    linear_baseline_values,
    normalize_advantages,
    policy_gradient_loss,
    ppo_clip_loss,
)

R = torch.tensor([[1.0, 0.0, 2.0]])
V = torch.tensor([[0.5, 0.4, 0.3]])
FULL = torch.ones(1, 3)


def test_discounted_returns_by_hand():
    assert discounted_returns(R, FULL, 0.9).tolist()[0] == pytest.approx([2.62, 1.8, 2.0])


def test_discounted_returns_stop_at_mask():
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert discounted_returns(R, mask, 0.9).tolist()[0] == pytest.approx([1.0, 0.0, 0.0])


def test_gae_by_hand():
    # delta = [0.86, -0.13, 1.7]; A2 = 1.7, A1 = -0.13 + .45*1.7, A0 = .86 + .45*A1
    adv = gae(R, V, FULL, gamma=0.9, lam=0.5)
    assert adv.tolist()[0] == pytest.approx([1.14575, 0.635, 1.7], abs=1e-6)


def test_gae_masked_episode_end_does_not_bootstrap_from_padding():
    adv = gae(R, V, torch.tensor([[1.0, 1.0, 0.0]]), gamma=0.9, lam=0.5)
    assert adv.tolist()[0] == pytest.approx([0.68, -0.4, 0.0], abs=1e-6)


def test_gae_lambda_one_equals_returns_minus_values():
    adv = gae(R, V, FULL, gamma=0.9, lam=1.0)
    assert torch.allclose(adv, discounted_returns(R, FULL, 0.9) - V)


def test_gae_batched_leading_dims():
    rewards, values = R.repeat(4, 2, 1), V.repeat(4, 2, 1)
    assert torch.allclose(gae(rewards, values, torch.ones_like(rewards), 0.9, 0.5)[3, 1], gae(R, V, FULL, 0.9, 0.5)[0])


def test_ppo_clip_by_hand():
    logp = torch.tensor([0.0, math.log(1.5), math.log(0.5)])
    adv = torch.tensor([1.0, 1.0, -1.0])
    # surrogates: min(1, 1) = 1; min(1.5, 1.2) = 1.2; min(-0.5, -0.8) = -0.8
    loss = ppo_clip_loss(logp, torch.zeros(3), adv, torch.ones(3), clip=0.2)
    assert float(loss) == pytest.approx(-(1.0 + 1.2 - 0.8) / 3)


def test_ppo_clip_ignores_masked_steps():
    logp = torch.tensor([0.0, 5.0])
    loss = ppo_clip_loss(logp, torch.zeros(2), torch.tensor([2.0, 100.0]), torch.tensor([1.0, 0.0]), 0.2)
    assert float(loss) == pytest.approx(-2.0)


def test_policy_gradient_gradient_is_minus_advantage_at_ratio_one():
    logp = torch.zeros(3, requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 4.0])
    policy_gradient_loss(logp, torch.zeros(3), adv, torch.ones(3)).backward()
    assert logp.grad.tolist() == pytest.approx([-1 / 3, 2 / 3, -4 / 3])


def test_normalize_advantages():
    adv = normalize_advantages(torch.tensor([1.0, 2.0, 3.0, 99.0]), torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert adv.tolist() == pytest.approx([-1.2247, 0.0, 1.2247, 0.0], abs=1e-3)


def test_linear_baseline_fits_a_function_of_its_features():
    torch.manual_seed(0)
    obs = torch.randn(6, 10, 3)
    t = torch.arange(10) / 100.0
    returns = 2.0 * obs[..., 0] - obs[..., 1] ** 2 + 3.0 * t + 0.5
    values = linear_baseline_values(obs, returns, torch.ones(6, 10))
    assert torch.allclose(values, returns, atol=1e-3)
    assert not values.requires_grad
