"""The feed-forward Gaussian MLP policy in numpy (plain and task-conditioned)."""

from __future__ import annotations

import numpy as np

from policy.spec import ACTIVATIONS, LOG_2PI, OBS_CLIP, PolicyWeights


class NumpyGaussianPolicy:
    """Diagonal Gaussian MLP evaluated in numpy; batched over the leading axis.

    >>> policy = NumpyGaussianPolicy(weights)
    >>> actions, logp = policy.sample(obs_batch, rng)
    >>> actions, logp = policy.sample(obs_batch, rng, context=task_vector)  # task-conditioned spec

    A task-conditioned spec (`conditioning` != "none") needs `context`: one task vector [C] for
    the whole batch or one per row [B, C]. The maths mirrors learner.networks.GaussianMLPPolicy.
    """

    recurrent = False

    def __init__(self, weights: PolicyWeights):
        if weights.spec.kind != "mlp":  # e.g. a recurrent RL^2 policy reaching a feed-forward-only consumer
            raise ValueError(f"policy {weights.version!r} is a {weights.spec.kind!r} policy; NumpyGaussianPolicy "
                             "runs 'mlp' policies only (policy.make_policy picks the right one)")
        self.spec = weights.spec
        self.version = weights.version
        a = {k: np.asarray(v, dtype=np.float32) for k, v in weights.arrays.items()}
        self._obs_mean, self._obs_std = a["obs_mean"], a["obs_std"]
        self._hidden = [
            (a[f"hidden.{i}.weight"].T.copy(), a[f"hidden.{i}.bias"]) for i in range(len(self.spec.hidden_sizes))
        ]
        mode = self.spec.conditioning
        self._embed = a["context_embed.weight"].T.copy() if mode == "additive" else None
        self._film = [(a[f"film.{i}.weight"].T.copy(), a[f"film.{i}.bias"])
                      for i in range(len(self.spec.hidden_sizes))] if mode == "film" else []
        if mode == "multihead":  # [K, A, H] -> [K, H, A]
            self._heads = (a["mean_heads.weight"].transpose(0, 2, 1).copy(), a["mean_heads.bias"])
        else:
            self._head = (a["mean_head.weight"].T.copy(), a["mean_head.bias"])
        self.log_std = a["log_std"]
        self._act = ACTIVATIONS[self.spec.activation]

    def mean(self, obs: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
        """Mean action for a batch of observations [B, obs_dim] -> [B, act_dim]."""
        x = np.clip((np.asarray(obs, np.float32) - self._obs_mean) / self._obs_std, -OBS_CLIP, OBS_CLIP)
        c = self._context(context, x.shape[:-1])
        mode = self.spec.conditioning
        if mode == "concat":
            x = np.concatenate([x, c], axis=-1)
        for i, (w, b) in enumerate(self._hidden):
            pre = x @ w + b
            if mode == "additive" and i == 0:
                pre = pre + c @ self._embed
            if mode == "film":
                gamma, beta = np.split(c @ self._film[i][0] + self._film[i][1], 2, axis=-1)
                pre = (1.0 + gamma) * pre + beta
            x = self._act(pre)
        if mode == "multihead":  # the task vector weights the heads: a one-hot vector picks one
            outs = np.einsum("...h,kha->...ka", x, self._heads[0]) + self._heads[1]
            return np.einsum("...k,...ka->...a", c, outs)
        return x @ self._head[0] + self._head[1]

    def _context(self, context: np.ndarray | None, batch_shape: tuple[int, ...]) -> np.ndarray:
        """The task vector broadcast to [B, C]; a clear error when a conditioned policy gets none."""
        dim = self.spec.context_dim
        if dim == 0:
            return np.zeros((*batch_shape, 0), np.float32)
        c = np.zeros(0, np.float32) if context is None else np.asarray(context, np.float32)
        if c.shape[-1:] != (dim,):
            raise ValueError(f"policy {self.version!r} is task-conditioned ({self.spec.conditioning!r}) and needs a "
                             f"task vector of length {dim} (SampleRequest.context), got shape {c.shape}")
        return np.broadcast_to(c, (*batch_shape, dim))

    def log_prob(self, obs: np.ndarray, actions: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
        return self._log_prob_at(self.mean(obs, context), actions)

    def _log_prob_at(self, mu: np.ndarray, actions: np.ndarray) -> np.ndarray:
        z = (actions - mu) / np.exp(self.log_std)
        return -0.5 * np.sum(z * z, axis=-1) - np.sum(self.log_std) - 0.5 * self.spec.act_dim * LOG_2PI

    def sample(self, obs: np.ndarray, rng: np.random.Generator, deterministic: bool = False,
               context: np.ndarray | None = None):
        """Actions and their log-probabilities under this policy (`context`: the task vector, if conditioned)."""
        mu = self.mean(obs, context)
        if deterministic:
            actions = mu
        else:
            noise = rng.standard_normal(mu.shape).astype(np.float32)
            actions = mu + noise * np.exp(self.log_std)
        return actions.astype(np.float32), self._log_prob_at(mu, actions).astype(np.float32)
