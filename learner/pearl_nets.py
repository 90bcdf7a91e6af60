"""PEARL's torch networks; `PEARLPolicy` is laid out as policy.spec.pearl_shapes so it exports to numpy
(policy.pearl.NumpyPEARLPolicy, policy.context.ContextEncoder) by name. All take any leading axes
(tasks x transitions), so one forward serves a whole meta-batch."""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from learner.sac import product_of_gaussians, tanh_gaussian_log_prob
from policy import OBS_CLIP, PolicySpec, PolicyWeights

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # as policy.pearl


def mlp(sizes: list[int]) -> nn.ModuleList:
    return nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))


def run_hidden(layers: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        x = F.relu(layer(x))
    return x


class ContextEncoder(nn.Module):
    """q(z | c): each transition [norm obs, action, reward, norm next obs] -> (mu_i, softplus -> var_i); product
    over axis -2."""

    def __init__(self, spec: PolicySpec):
        super().__init__()
        self.latent_dim = spec.context_dim
        self.hidden = mlp([2 * spec.obs_dim + spec.act_dim + 1, *spec.hidden_sizes])
        self.out = nn.Linear(spec.hidden_sizes[-1], 2 * spec.context_dim)

    def forward(self, norm_obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                norm_next_obs: torch.Tensor):
        """Posterior (mu, var) [..., Z] of transitions [..., N, .]."""
        x = torch.cat([norm_obs, actions, rewards[..., None], norm_next_obs], -1)
        out = self.out(run_hidden(self.hidden, x))
        return product_of_gaussians(out[..., : self.latent_dim], F.softplus(out[..., self.latent_dim:]))


class PEARLPolicy(nn.Module):
    """What PEARL publishes: observation statistics (buffers), the tanh-Gaussian actor pi(a | s, z) on
    [norm obs, z] (state-dependent log std, clamped) and the context encoder. Its state_dict keys are
    exactly `spec.weight_names()`, so numpy weights load back one to one."""

    def __init__(self, spec: PolicySpec):
        super().__init__()
        self.spec = spec
        self.register_buffer("obs_mean", torch.zeros(spec.obs_dim))
        self.register_buffer("obs_std", torch.ones(spec.obs_dim))
        self.hidden = mlp([spec.obs_dim + spec.context_dim, *spec.hidden_sizes])
        self.mean_head = nn.Linear(spec.hidden_sizes[-1], spec.act_dim)
        self.log_std_head = nn.Linear(spec.hidden_sizes[-1], spec.act_dim)
        self.encoder = ContextEncoder(spec)

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.clamp((obs - self.obs_mean) / self.obs_std, -OBS_CLIP, OBS_CLIP)

    def distribution(self, norm_obs: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std) of the pre-tanh Gaussian."""
        x = run_hidden(self.hidden, torch.cat([norm_obs, z], -1))
        return self.mean_head(x), self.log_std_head(x).clamp(LOG_STD_MIN, LOG_STD_MAX)

    def act(self, norm_obs: torch.Tensor, z: torch.Tensor,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised (action, log pi(action)); the noise drawn from `generator`."""
        mean, log_std = self.distribution(norm_obs, z)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        u = mean + log_std.exp() * noise
        return torch.tanh(u), tanh_gaussian_log_prob(u, mean, log_std)

    def to_weights(self, version: str) -> PolicyWeights:
        """Numpy weights named by policy.spec.pearl_shapes (policy.pearl and policy.context run them)."""
        return PolicyWeights(self.spec, {k: v.detach().cpu().numpy().astype(np.float32)
                                         for k, v in self.state_dict().items()}, version)

    def load_weights(self, weights: PolicyWeights) -> None:
        """Load published numpy weights (e.g. a registered PEARL artifact) into this module."""
        state = {k: torch.as_tensor(np.asarray(weights.arrays[k]), dtype=torch.float32)
                 for k in self.state_dict()}
        self.load_state_dict(state)


class TwinQ(nn.Module):
    """Two Q(s, a, z) networks on [norm obs, action, z]; returns both [...]."""

    def __init__(self, spec: PolicySpec, hidden_sizes: tuple[int, ...]):
        super().__init__()
        sizes = [spec.obs_dim + spec.act_dim + spec.context_dim, *hidden_sizes]
        self.q1, self.q2 = mlp(sizes), mlp(sizes)
        self.out1, self.out2 = nn.Linear(sizes[-1], 1), nn.Linear(sizes[-1], 1)

    def forward(self, norm_obs: torch.Tensor, actions: torch.Tensor, z: torch.Tensor):
        x = torch.cat([norm_obs, actions, z], -1)
        return self.out1(run_hidden(self.q1, x))[..., 0], self.out2(run_hidden(self.q2, x))[..., 0]


class RewardDecoder(nn.Module):
    """r(s, a, s', z): predicts a transition's reward from z (training only, never published). Its error is an
    auxiliary encoder loss: z must carry what makes the task's reward predictable, a denser signal than the
    critic's Bellman error alone (the reward-decoder variant of context meta-RL, e.g. VariBAD)."""

    def __init__(self, spec: PolicySpec, hidden_sizes: tuple[int, ...]):
        super().__init__()
        self.hidden = mlp([2 * spec.obs_dim + spec.act_dim + spec.context_dim, *hidden_sizes])
        self.out = nn.Linear(hidden_sizes[-1], 1)

    def forward(self, norm_obs: torch.Tensor, actions: torch.Tensor, norm_next_obs: torch.Tensor, z: torch.Tensor):
        return self.out(run_hidden(self.hidden, torch.cat([norm_obs, actions, norm_next_obs, z], -1)))[..., 0]
