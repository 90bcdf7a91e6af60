"""The belief learner's dynamics model p(s' | s, a, z) (learner/belief.py, `learner.dynamics`): what lets a belief
infer a task vector that shows in how the system moves rather than in what it is paid - a robot's joint gains.

It is regressed on the task model's replay rows [obs, action, next obs, z] (z the task's or robot's TRUE vector):

    delta_hat = f(o_norm, clip(a), z)            target  delta = clip(norm(o')) - clip(norm(o))
    L_dyn = mean over rows and obs dimensions of (delta_hat - delta)^2

with norm(o) = (o - obs_mean) / obs_std the policy's observation normaliser, as the reward model uses. On a new
task the numpy twin (`policy.belief.DynamicsTwin`) scores each particle's predicted change against the one observed,
a Student-t per obs dimension whose scale is the model's robust residual scale on fresh data (`residual_scales`)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from policy.spec import INPUT_CLIP, OBS_CLIP

ROBUST = 1.4826  # median absolute deviation -> standard deviation of a normal
SCALE_FLOOR = 1e-3  # a dimension the model predicts exactly (a constant) must not get an infinitely sharp likelihood


class DynamicsModel(nn.Module):
    """ReLU MLP [normalised obs, action, z] -> normalised obs change [.., D] (numpy twin: DynamicsTwin.predict)."""

    def __init__(self, in_dim: int, sizes: Sequence[int], obs_dim: int):
        super().__init__()
        dims = [in_dim, *sizes]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.out = nn.Linear(dims[-1], obs_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.out(x)


def dynamics_data(rows: torch.Tensor, obs_dim: int, act_dim: int, mean: torch.Tensor,
                  std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw replay rows [obs, action, next obs, z] -> the model's input [obs_norm, clip(action), z] and its target
    (the normalised obs change), normalised and clipped as the numpy twin does."""
    d, a = obs_dim, act_dim
    obs = ((rows[:, :d] - mean) / std).clamp(-OBS_CLIP, OBS_CLIP)
    nxt = ((rows[:, d + a:2 * d + a] - mean) / std).clamp(-OBS_CLIP, OBS_CLIP)
    act = rows[:, d:d + a].clamp(-INPUT_CLIP, INPUT_CLIP)
    return torch.cat([obs, act, rows[:, 2 * d + a:]], dim=1), nxt - obs


def dynamics_loss(model: DynamicsModel, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_dyn: squared error of the predicted change, averaged over rows and obs dimensions."""
    return torch.nn.functional.mse_loss(model(x), target)


def residual_scales(predicted: np.ndarray | None, target: np.ndarray) -> np.ndarray:
    """Per obs dimension, 1.4826 x the median absolute residual of `predicted` (rows the model has not been fitted
    on) against `target` [N, D], floored; without a prediction (no fit yet), the target's own spread."""
    if predicted is None:
        return np.maximum(np.std(target, axis=0), SCALE_FLOOR).astype(np.float64)
    return np.maximum(ROBUST * np.median(np.abs(predicted - target), axis=0), SCALE_FLOOR).astype(np.float64)
