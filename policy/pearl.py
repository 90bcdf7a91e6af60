"""PEARL's actor in numpy: a tanh-squashed Gaussian on [normalised obs, z] (soft actor-critic).

Actions are tanh(u), u ~ N(mean(x), exp(log_std(x))^2), with log_std clamped to [LOG_STD_MIN,
LOG_STD_MAX]; the log-probability carries the change of variables (Haarnoja et al. 2018, app. C):

    log pi(a | x) = log N(u; mean, std) - sum_j log(1 - tanh(u_j)^2),
    log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u))          (stable form)

The task latent z is the `context` vector (one per batch or one per row). Mirrors learner.pearl_nets.
"""

from __future__ import annotations

import math

import numpy as np

from policy.context import softplus
from policy.spec import ACTIVATIONS, LOG_2PI, OBS_CLIP, PolicyWeights

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


def tanh_log_det(u: np.ndarray) -> np.ndarray:
    """sum_j log(1 - tanh(u_j)^2) over the last axis, computed stably."""
    return np.sum(2.0 * (math.log(2.0) - u - softplus(-2.0 * u)), axis=-1)


class NumpyPEARLPolicy:
    """Tanh-Gaussian actor of a PEARL policy (spec kind "pearl"); batched over the leading axis.

    >>> policy = NumpyPEARLPolicy(weights)
    >>> actions, logp = policy.sample(obs_batch, rng, context=z)
    """

    recurrent = False

    def __init__(self, weights: PolicyWeights):
        if weights.spec.kind != "pearl":
            raise ValueError(f"policy {weights.version!r} is a {weights.spec.kind!r} policy; NumpyPEARLPolicy runs "
                             "'pearl' policies only (policy.make_policy picks the right one)")
        self.spec, self.version = weights.spec, weights.version
        a = {k: np.asarray(v, np.float32) for k, v in weights.arrays.items()}
        self._obs_mean, self._obs_std = a["obs_mean"], a["obs_std"]
        self._hidden = [(a[f"hidden.{i}.weight"].T.copy(), a[f"hidden.{i}.bias"])
                        for i in range(len(self.spec.hidden_sizes))]
        self._mean_head = (a["mean_head.weight"].T.copy(), a["mean_head.bias"])
        self._log_std_head = (a["log_std_head.weight"].T.copy(), a["log_std_head.bias"])
        self._act = ACTIVATIONS[self.spec.activation]

    def distribution(self, obs: np.ndarray, context: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(mean, log_std) of the pre-tanh Gaussian for obs [B, obs_dim] and z [Z] or [B, Z]."""
        x = np.clip((np.asarray(obs, np.float32) - self._obs_mean) / self._obs_std, -OBS_CLIP, OBS_CLIP)
        dim = self.spec.context_dim
        z = np.zeros(0, np.float32) if context is None else np.asarray(context, np.float32)
        if z.shape[-1:] != (dim,):
            raise ValueError(f"PEARL policy {self.version!r} needs its task latent z of length {dim} as the "
                             f"context (SampleRequest.context), got shape {z.shape}")
        x = np.concatenate([x, np.broadcast_to(z, (*x.shape[:-1], dim))], axis=-1)
        for w, b in self._hidden:
            x = self._act(x @ w + b)
        log_std = np.clip(x @ self._log_std_head[0] + self._log_std_head[1], LOG_STD_MIN, LOG_STD_MAX)
        return x @ self._mean_head[0] + self._mean_head[1], log_std

    def mean(self, obs: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
        """The deterministic action tanh(mean)."""
        return np.tanh(self.distribution(obs, context)[0])

    def sample(self, obs: np.ndarray, rng: np.random.Generator, deterministic: bool = False,
               context: np.ndarray | None = None):
        """Actions in [-1, 1] and their log-probabilities (float32), like the other numpy policies."""
        mu, log_std = self.distribution(obs, context)
        noise = np.zeros_like(mu) if deterministic else rng.standard_normal(mu.shape).astype(np.float32)
        u = mu + noise * np.exp(log_std)
        logp = -0.5 * np.sum(noise * noise, axis=-1) - np.sum(log_std, axis=-1) - 0.5 * self.spec.act_dim * LOG_2PI
        return np.tanh(u).astype(np.float32), (logp - tanh_log_det(u)).astype(np.float32)
