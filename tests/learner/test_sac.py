"""SAC / PEARL losses against hand-computed numbers (learner/sac.py)."""

from __future__ import annotations

import math

import pytest
import torch

from learner.sac import (
    actor_loss,
    alpha_loss,
    critic_loss,
    kl_to_standard_normal,
    polyak,
    product_of_gaussians,
    tanh_gaussian_log_prob,
    td_target,
)


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_td_target_bootstraps_with_the_soft_value():
    # 5 * 1 + 0.9 * (2 - 0.5 * (-1)) = 5 + 0.9 * 2.5 = 7.25
    y = td_target(t(1.0), t(2.0), t(-1.0), torch.tensor(0.5), gamma=0.9, reward_scale=5.0)
    assert y.item() == pytest.approx(7.25)
    assert not y.requires_grad


def test_critic_actor_alpha_losses_by_hand():
    assert critic_loss(t(1.0, 2.0), t(0.0, 0.0), t(0.0, 1.0)).item() == pytest.approx((1 + 1) / 2 + (0 + 1) / 2)
    expected = ((0.5 * -1.0 - 3.0) + (0.5 * 1.0 - 1.0)) / 2
    assert actor_loss(t(-1.0, 1.0), t(3.0, 1.0), torch.tensor(0.5)).item() == pytest.approx(expected)
    log_alpha = torch.tensor(math.log(2.0), requires_grad=True)
    loss = alpha_loss(log_alpha, t(-1.0, -3.0), target_entropy=-2.0)  # logp + target = -3, -5
    assert loss.item() == pytest.approx(-math.log(2.0) * -4.0)
    loss.backward()  # d/dlog_alpha = -mean(logp + target) = 4 > 0: entropy above target lowers alpha
    assert log_alpha.grad.item() == pytest.approx(4.0)


def test_kl_to_standard_normal_by_hand():
    assert kl_to_standard_normal(t(0.0, 0.0), t(1.0, 1.0)).item() == pytest.approx(0.0)
    # 0.5 * (0.5 + 1 - 1 - log 0.5) for one dimension
    assert kl_to_standard_normal(t(1.0), t(0.5)).item() == pytest.approx(0.5 * (0.5 + 1 - 1 - math.log(0.5)))


def test_product_of_gaussians_and_tanh_log_prob_by_hand():
    mu, var = product_of_gaussians(torch.tensor([[1.0], [3.0]]), torch.tensor([[1.0], [3.0]]))
    assert var.item() == pytest.approx(0.75) and mu.item() == pytest.approx(1.5)
    logp = tanh_gaussian_log_prob(t(0.5), t(0.0), t(0.0))
    assert logp.item() == pytest.approx(-0.125 - 0.5 * math.log(2 * math.pi) - math.log(1 - math.tanh(0.5) ** 2))


def test_polyak_moves_the_target_by_tau():
    source, target = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    with torch.no_grad():
        source.weight.fill_(1.0), target.weight.fill_(0.0)
    polyak(target, source, 0.1)
    assert target.weight.item() == pytest.approx(0.1)
