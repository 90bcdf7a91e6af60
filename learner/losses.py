"""Pure RL maths on [..., H] tensors with a validity mask. Every function is tested against
hand-computed numbers (tests/learner/test_losses.py)."""

from __future__ import annotations

import torch


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """R_t = sum_k gamma^k r_{t+k}, within each episode (padding contributes nothing)."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = (rewards[..., t] + gamma * running) * mask[..., t]
        out[..., t] = running
    return out


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """Generalised advantage estimation (Schulman et al. 2016), value 0 after the last step.

    delta_t = r_t + gamma V_{t+1} - V_t;  A_t = delta_t + gamma lam A_{t+1}.
    """
    horizon = rewards.shape[-1]
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[..., 0])
    next_adv = torch.zeros_like(rewards[..., 0])
    for t in range(horizon - 1, -1, -1):
        delta = rewards[..., t] + gamma * next_value - values[..., t]
        next_adv = (delta + gamma * lam * next_adv) * mask[..., t]
        advantages[..., t] = next_adv
        next_value = values[..., t] * mask[..., t]
    return advantages


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def normalize_advantages(adv: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit std over the valid steps of one task."""
    mean = masked_mean(adv, mask)
    std = torch.sqrt(masked_mean((adv - mean) ** 2, mask))
    return (adv - mean) / (std + eps) * mask


def policy_gradient_loss(
    logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """-E[ratio * A] with ratio = pi/pi_old: the vanilla PG loss with an importance weight,
    whose gradient at pi = pi_old is -E[grad log pi * A] (ProMP's inner objective)."""
    ratio = torch.exp(logp - logp_old)
    return -masked_mean(ratio * adv, mask)


def ppo_clip_loss(
    logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, clip: float
) -> torch.Tensor:
    """-E[min(ratio A, clip(ratio, 1-eps, 1+eps) A)] (Schulman et al. 2017, eq. 7)."""
    ratio = torch.exp(logp - logp_old)
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * adv)
    return -masked_mean(surrogate, mask)


def linear_baseline_values(
    obs: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, reg: float = 1e-5
) -> torch.Tensor:
    """Fit MAML/ProMP's linear feature baseline to one task's returns and predict values.

    Features [o, o^2, t, t^2, t^3, 1] (t = step/100), ridge regression on the valid steps.
    obs [E, H, D], returns/mask [E, H] -> values [E, H]. Constants: no gradient flows.
    """
    with torch.no_grad():
        o = torch.clamp(obs, -10.0, 10.0)
        steps, horizon = obs.shape[0], obs.shape[1]
        t = (torch.arange(horizon, dtype=obs.dtype, device=obs.device) / 100.0).expand(steps, horizon)
        feats = torch.cat([o, o * o, torch.stack([t, t**2, t**3, torch.ones_like(t)], -1)], -1)
        x = feats.reshape(-1, feats.shape[-1]) * mask.reshape(-1, 1)
        y = returns.reshape(-1) * mask.reshape(-1)
        return (feats @ _ridge_weights(x.T @ x, x.T @ y, reg)) * mask


def _ridge_weights(gram: torch.Tensor, target: torch.Tensor, reg: float) -> torch.Tensor:
    """Solve ``(gram + reg * I) w = target``, raising the ridge until solvable (as in rllab).

    Degenerate features (an observation entry constant at 1.0 duplicates the bias column, and its square
    too; an all-zero entry gives a zero row) make ``gram`` singular, and in float32 a ridge of 1e-5 next to
    diagonal entries in the thousands rounds away: every ridge may then fail, so the last resort is the
    pseudo-inverse (the minimum-norm least-squares weights), which always exists.
    """
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    for scale in (1.0, 10.0, 100.0, 1000.0):
        weights, info = torch.linalg.solve_ex(gram + reg * scale * eye, target)
        if int(info) == 0 and torch.isfinite(weights).all():
            return weights
    return torch.linalg.pinv(gram + reg * eye) @ target
