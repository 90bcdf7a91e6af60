"""Pure soft actor-critic and PEARL losses (Haarnoja et al. 2018; Rakelly et al. 2019), batched over
any leading axes (tasks x transitions). Each docstring gives the equation; tests/learner/test_sac.py
checks them against hand-computed numbers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MIN_VAR = 1e-7  # as policy.context.MIN_VAR: numpy and torch posteriors must agree


def tanh_gaussian_log_prob(u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log pi(tanh(u)) = sum_j [log N(u_j; mean_j, std_j) - log(1 - tanh(u_j)^2)],
    with log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)) for stability. Sums the last axis."""
    normal = -0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    log_det = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
    return (normal - log_det).sum(-1)


def td_target(rewards: torch.Tensor, next_q: torch.Tensor, next_logp: torch.Tensor, alpha: torch.Tensor,
              gamma: float, reward_scale: float) -> torch.Tensor:
    """y = reward_scale * r + gamma * (min_k Q'_k(s', a') - alpha * log pi(a' | s')), a' ~ pi(s').
    Episodes end by truncation only (time limits), so every transition bootstraps. No gradient flows."""
    return (reward_scale * rewards + gamma * (next_q - alpha * next_logp)).detach()


def critic_loss(q1: torch.Tensor, q2: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Twin-Q regression: mean (Q1 - y)^2 + mean (Q2 - y)^2."""
    return F.mse_loss(q1, target) + F.mse_loss(q2, target)


def actor_loss(logp: torch.Tensor, q: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """mean (alpha * log pi(a | s) - min_k Q_k(s, a)), a ~ pi(s) reparameterised; alpha is a constant here."""
    return (alpha.detach() * logp - q).mean()


def alpha_loss(log_alpha: torch.Tensor, logp: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """Automatic entropy tuning: -mean log_alpha * (log pi(a | s) + target_entropy), log pi held fixed."""
    return -(log_alpha * (logp.detach() + target_entropy)).mean()


def kl_to_standard_normal(mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag var) || N(0, I)) = 0.5 * sum_j (var_j + mu_j^2 - 1 - log var_j), summed over the last axis."""
    return 0.5 * (var + mu**2 - 1.0 - var.log()).sum(-1)


def product_of_gaussians(mus: torch.Tensor, variances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Product of the factors along axis -2: var = 1 / sum_i 1/var_i, mu = var * sum_i mu_i / var_i."""
    variances = variances.clamp(min=MIN_VAR)
    var = 1.0 / (1.0 / variances).sum(-2)
    return var * (mus / variances).sum(-2), var


@torch.no_grad()
def polyak(target: torch.nn.Module, source: torch.nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, parameter by parameter."""
    for t, s in zip(target.parameters(), source.parameters()):
        t.lerp_(s, tau)
