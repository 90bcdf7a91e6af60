"""The torch twin of `workers.recurrent.NumpyRL2Policy`: a Gaussian GRU policy for RL^2,
evaluated over whole trials (BPTT through every episode of a trial)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import nn

from policy import INPUT_CLIP, OBS_CLIP, PolicySpec, PolicyWeights, input_dim


def recurrent_spec(spec: PolicySpec, hidden: int) -> PolicySpec:
    """`spec` as a GRU policy of width `hidden` (a spec that already is one is kept as it is)."""
    if spec.kind == "rl2":
        return spec
    return dataclasses.replace(spec, kind="rl2", hidden_sizes=(hidden,))


def trial_inputs(actions: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor,
                 horizon: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the GRU saw besides the observation, rebuilt from a trial's recorded arrays.

    actions [B, T, A], rewards/mask [B, T] (T = episodes * horizon) -> previous action [B, T, A],
    previous reward [B, T], done flag of the previous step [B, T] — exactly as `rollout_trials` fed them.
    """
    prev_action = torch.zeros_like(actions)
    prev_action[:, 1:] = actions[:, :-1] * mask[:, :-1, None]
    prev_reward = torch.zeros_like(rewards)
    prev_reward[:, 1:] = rewards[:, :-1] * mask[:, :-1]
    steps = torch.arange(rewards.shape[1], device=rewards.device)
    prev_done = ((steps % horizon == 0) & (steps > 0)).to(rewards.dtype).expand_as(rewards)
    return prev_action, prev_reward, prev_done


class GaussianGRUPolicy(nn.Module):
    """Diagonal Gaussian policy whose mean is a linear head on a GRU; state-independent log std.

    State dict keys equal the numpy policy's array names (`policy.spec.rl2_shapes`).
    """

    def __init__(self, spec: PolicySpec, init_std: float = 1.0):
        super().__init__()
        if spec.kind != "rl2" or len(spec.hidden_sizes) != 1:
            raise ValueError(f"GaussianGRUPolicy needs an 'rl2' spec with one hidden size, got {spec}")
        self.spec = spec
        hidden = spec.hidden_sizes[0]
        self.gru = nn.GRU(input_dim(spec), hidden, batch_first=True)
        self.mean_head = nn.Linear(hidden, spec.act_dim)
        self.log_std = nn.Parameter(torch.full((spec.act_dim,), math.log(init_std)))
        self.register_buffer("obs_mean", torch.zeros(spec.obs_dim))
        self.register_buffer("obs_std", torch.ones(spec.obs_dim))
        with torch.no_grad():  # start near zero mean, as the MLP policy does
            self.mean_head.weight.mul_(0.01)
            self.mean_head.bias.zero_()

    def forward(self, obs: torch.Tensor, prev_action: torch.Tensor, prev_reward: torch.Tensor,
                prev_done: torch.Tensor, hidden: torch.Tensor | None = None):
        """(mean [B, T, A], log_std [A], final hidden [B, H]) over sequences [B, T, ...] from `hidden` (zeros)."""
        x = torch.cat([
            torch.clamp((obs - self.obs_mean) / self.obs_std, -OBS_CLIP, OBS_CLIP),
            torch.clamp(prev_action, -INPUT_CLIP, INPUT_CLIP),
            torch.clamp(prev_reward, -INPUT_CLIP, INPUT_CLIP)[..., None],
            prev_done[..., None],
        ], dim=-1)
        out, last = self.gru(x, None if hidden is None else hidden[None])
        return self.mean_head(out), self.log_std, last[0]

    def trial_mean(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor,
                   horizon: int) -> torch.Tensor:
        """Mean actions along recorded trials [B, T, ...], each trial from a zero hidden state."""
        return self(obs, *trial_inputs(actions, rewards, mask, horizon))[0]

    def to_weights(self, version: str, params: dict[str, torch.Tensor] | None = None) -> PolicyWeights:
        """Numpy weights for workers (`params` would override the module's own, as for the MLP)."""
        state = {k: v.detach() for k, v in self.state_dict().items()}
        state.update({k: v.detach() for k, v in (params or {}).items()})
        return PolicyWeights(self.spec, {k: v.cpu().numpy().astype(np.float32, copy=True) for k, v in state.items()},
                             version)

    def load_weights(self, weights: PolicyWeights) -> None:
        """Load numpy weights (e.g. from a registered artifact) into this module."""
        self.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in weights.arrays.items()})
