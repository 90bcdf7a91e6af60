"""PEARL's context encoder in numpy: what a robot runs to infer its task latent z without torch.

Each context transition (obs, action, reward, next_obs) goes through an MLP to one Gaussian factor over z,
(mu_i, var_i = softplus(.)); the posterior is their product (Rakelly et al. 2019, eq. 4, without the
prior factor, as in the paper's code):

    var = 1 / sum_i (1 / var_i),    mu = var * sum_i (mu_i / var_i)

and with no transitions it is the prior N(0, I). The maths mirrors learner.pearl_nets.ContextEncoder.

>>> encoder = ContextEncoder(weights)              # a spec of kind "pearl"
>>> mu, var = encoder.posterior(obs, actions, rewards, next_obs)
>>> z = encoder.sample(mu, var, rng)               # the vector a SAC policy takes as `context`
"""

from __future__ import annotations

import numpy as np

from policy.spec import ACTIVATIONS, OBS_CLIP, PolicyWeights, encoder_input_dim

MIN_VAR = 1e-7  # factor variances are clamped here so one confident transition cannot divide by zero


def softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + exp(x)), stable for large |x|."""
    return np.logaddexp(0.0, x)


def product_of_gaussians(mus: np.ndarray, variances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Product of the Gaussian factors along axis -2: [..., N, Z] -> ([..., Z], [..., Z])."""
    variances = np.maximum(variances, MIN_VAR)
    var = 1.0 / np.sum(1.0 / variances, axis=-2)
    return var * np.sum(mus / variances, axis=-2), var


class ContextEncoder:
    """Permutation-invariant posterior q(z | context) of a PEARL policy's weights (kind "pearl")."""

    def __init__(self, weights: PolicyWeights):
        spec = weights.spec
        if spec.kind != "pearl":
            raise ValueError(f"policy {weights.version!r} is a {spec.kind!r} policy; only a 'pearl' (PEARL) policy "
                             "carries a context encoder")
        self.spec, self.latent_dim = spec, spec.context_dim
        a = {k: np.asarray(v, np.float64) for k, v in weights.arrays.items()}
        self._obs_mean, self._obs_std = a["obs_mean"], a["obs_std"]
        self._hidden = [(a[f"encoder.hidden.{i}.weight"].T, a[f"encoder.hidden.{i}.bias"])
                        for i in range(len(spec.hidden_sizes))]
        self._out = (a["encoder.out.weight"].T, a["encoder.out.bias"])
        self._act = ACTIVATIONS[spec.activation]

    def factors(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                next_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-transition factors: obs and next_obs [..., N, obs_dim], actions [..., N, act_dim], rewards [..., N]
        -> (mu [..., N, Z], var [..., N, Z])."""
        x = self._inputs(obs, actions, rewards, next_obs)
        for w, b in self._hidden:
            x = self._act(x @ w + b)
        out = x @ self._out[0] + self._out[1]
        return out[..., : self.latent_dim], softplus(out[..., self.latent_dim:])

    def posterior(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                  next_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mu, var) of q(z | these transitions); the prior (0, 1) when there are none."""
        if np.asarray(rewards).shape[-1] == 0:
            shape = (*np.asarray(rewards).shape[:-1], self.latent_dim)
            return np.zeros(shape), np.ones(shape)
        return product_of_gaussians(*self.factors(obs, actions, rewards, next_obs))

    @staticmethod
    def sample(mu: np.ndarray, var: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One z ~ N(mu, var) (float32, the policy's context)."""
        return (mu + np.sqrt(var) * rng.standard_normal(np.shape(mu))).astype(np.float32)

    def _inputs(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
        obs, next_obs = np.asarray(obs, np.float64), np.asarray(next_obs, np.float64)
        actions, rewards = np.asarray(actions, np.float64), np.asarray(rewards, np.float64)[..., None]
        d, a = self.spec.obs_dim, self.spec.act_dim
        if obs.shape[-1] != d or next_obs.shape[-1] != d or actions.shape[-1] != a:
            raise ValueError(f"context transitions need obs and next_obs [..., {d}] and actions [..., {a}], got "
                             f"{obs.shape}, {next_obs.shape} and {actions.shape}")
        norm = [np.clip((o - self._obs_mean) / self._obs_std, -OBS_CLIP, OBS_CLIP) for o in (obs, next_obs)]
        out = np.concatenate([norm[0], actions, rewards, norm[1]], axis=-1)
        assert out.shape[-1] == encoder_input_dim(self.spec)
        return out
