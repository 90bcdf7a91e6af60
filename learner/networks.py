"""Torch networks: the Gaussian MLP policy (same weights layout as policy.mlp) and an
observation normaliser whose statistics travel with the weights."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from learner.conditioning import MultiHead, broadcast_context, film
from policy import OBS_CLIP, PolicySpec, PolicyWeights

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


class GaussianMLPPolicy(nn.Module):
    """Diagonal Gaussian policy: mean = MLP(normalised obs), state-independent log std.

    Parameters are what meta-learning adapts; `obs_mean`/`obs_std` are buffers (never adapted).
    A task-conditioned spec (learner.conditioning) takes the task vector as `forward(obs, context)`.
    """

    def __init__(self, spec: PolicySpec, init_std: float = 1.0):
        super().__init__()
        self.spec = spec
        mode, c = spec.conditioning, spec.context_dim
        sizes = [spec.obs_dim, *spec.hidden_sizes]
        fan_in = [a + c if (i == 0 and mode == "concat") else a for i, a in enumerate(sizes[:-1])]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(fan_in, sizes[1:]))
        if mode == "additive":
            self.context_embed = nn.Linear(c, sizes[1], bias=False)
        if mode == "film":
            self.film = nn.ModuleList(nn.Linear(c, 2 * h) for h in spec.hidden_sizes)
        if mode == "multihead":
            self.mean_heads = MultiHead(spec.num_heads, sizes[-1], spec.act_dim)
        else:
            self.mean_head = nn.Linear(sizes[-1], spec.act_dim)
        self.log_std = nn.Parameter(torch.full((spec.act_dim,), math.log(init_std)))
        self.register_buffer("obs_mean", torch.zeros(spec.obs_dim))
        self.register_buffer("obs_std", torch.ones(spec.obs_dim))
        self._activation = ACTIVATIONS[spec.activation]()
        with torch.no_grad():  # a small output layer starts the policy near zero mean (as in PPO)
            head = self.mean_heads if mode == "multihead" else self.mean_head
            head.weight.mul_(0.01)
            head.bias.zero_()

    def forward(self, obs: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std) for observations [..., obs_dim] (and the task vector [C] or [..., C])."""
        x = torch.clamp((obs - self.obs_mean) / self.obs_std, -OBS_CLIP, OBS_CLIP)
        mode = self.spec.conditioning
        if mode == "none":
            for layer in self.hidden:
                x = self._activation(layer(x))
            return self.mean_head(x), self.log_std
        if context is None:
            raise ValueError(f"this policy is task-conditioned ({mode!r}): forward needs the task vector")
        c = broadcast_context(context, x.shape[:-1], self.spec.context_dim)
        if mode == "concat":
            x = torch.cat([x, c], dim=-1)
        for i, layer in enumerate(self.hidden):
            pre = layer(x)
            if mode == "additive" and i == 0:
                pre = pre + self.context_embed(c)
            if mode == "film":
                pre = film(pre, self.film[i], c)
            x = self._activation(pre)
        mean = self.mean_heads(x, c) if mode == "multihead" else self.mean_head(x)
        return mean, self.log_std

    def to_weights(self, version: str, params: dict[str, torch.Tensor] | None = None) -> PolicyWeights:
        """Numpy weights for workers; `params` overrides the module's own (adapted weights)."""
        state = {k: v.detach() for k, v in self.state_dict().items()}
        if params is not None:
            state.update({k: v.detach() for k, v in params.items()})
        arrays = {k: v.cpu().numpy().astype(np.float32, copy=True) for k, v in state.items()}
        return PolicyWeights(self.spec, arrays, version)

    def load_weights(self, weights: PolicyWeights) -> None:
        """Load numpy weights (e.g. from a registered artifact) into this module."""
        self.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in weights.arrays.items()})


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Log density of a diagonal Gaussian, summed over the action dimension."""
    z = (actions - mean) * torch.exp(-log_std)
    return -0.5 * (z * z).sum(-1) - log_std.sum(-1) - 0.5 * mean.shape[-1] * math.log(2 * math.pi)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)


class RunningNormalizer:
    """Running mean/variance of observations (parallel Welford update, float64)."""

    def __init__(self, dim: int, eps: float = 1e-4):
        self.mean = np.zeros(dim)
        self.var = np.ones(dim)
        self.count = eps

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64).reshape(-1, self.mean.shape[0])
        if len(x) == 0:
            return
        batch_mean, batch_var, n = x.mean(0), x.var(0), len(x)
        delta, total = batch_mean - self.mean, self.count + n
        self.mean = self.mean + delta * n / total
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.var, self.count = m2 / total, total

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.var, 1e-8))

    def state_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "var": self.var.tolist(), "count": float(self.count)}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var = np.asarray(state["mean"]), np.asarray(state["var"])
        self.count = float(state["count"])
