"""The linear feature baseline on degenerate observation features (a plugin env's constant, duplicate or
all-zero entries): it must fit, never raise (Trust item 8: torch.linalg.solve raised 'input matrix is singular')."""

from __future__ import annotations

import pytest
import torch

from learner.losses import linear_baseline_values


def degenerate_obs(episodes: int = 20, horizon: int = 100) -> torch.Tensor:
    """[E, H, 5]: a free entry, a quaternion w constant at 1.0, its duplicate, an all-zero entry, the first again."""
    torch.manual_seed(0)
    free = torch.randn(episodes, horizon)
    ones = torch.ones(episodes, horizon)
    return torch.stack([free, ones, ones.clone(), torch.zeros(episodes, horizon), free.clone()], -1)


def test_plain_solve_is_singular_on_these_features():
    """The failure this guards against: the normal equations of these features are singular in float32."""
    obs = degenerate_obs()
    t = (torch.arange(100) / 100.0).expand(20, 100)
    feats = torch.cat([obs, obs * obs, torch.stack([t, t**2, t**3, torch.ones_like(t)], -1)], -1).reshape(-1, 14)
    with pytest.raises(torch.linalg.LinAlgError):
        torch.linalg.solve(feats.T @ feats + 1e-5 * torch.eye(14), feats.T @ torch.ones(2000))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_degenerate_features_fit_without_error(dtype):
    obs = degenerate_obs().to(dtype)
    t = torch.arange(100, dtype=dtype) / 100.0
    returns = 2.0 * obs[..., 0] + 3.0 * t + 0.5  # a function the features can express
    mask = torch.ones(20, 100, dtype=dtype)
    mask[:5, 60:] = 0.0  # padded steps, as after early termination
    values = linear_baseline_values(obs, returns, mask)
    assert torch.isfinite(values).all()
    assert torch.allclose(values, returns * mask, atol=1e-2)
    assert (values[:5, 60:] == 0).all()


def test_all_zero_mask_gives_zero_values():
    obs = degenerate_obs(2, 10)
    values = linear_baseline_values(obs, torch.randn(2, 10), torch.zeros(2, 10))
    assert torch.equal(values, torch.zeros(2, 10))
