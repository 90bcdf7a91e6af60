"""The policy as the workers (and robots) see it: a spec plus plain numpy weights.

Workers never import the learner: the learner ships a `PolicyWeights` (spec + arrays) and the
worker evaluates the same Gaussian MLP in numpy. Numpy keeps rollouts single-threaded,
deterministic and free of torch start-up cost inside every actor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

OBS_CLIP = 10.0
LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class PolicySpec:
    """Shape of a Gaussian MLP policy: what a factory needs to rebuild it anywhere."""

    obs_dim: int
    act_dim: int
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "tanh"

    def __post_init__(self) -> None:
        if self.obs_dim <= 0 or self.act_dim <= 0:
            raise ValueError(f"obs_dim and act_dim must be positive, got {self.obs_dim}, {self.act_dim}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; expected one of {sorted(ACTIVATIONS)}")

    def to_dict(self) -> dict:
        return {
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "hidden_sizes": list(self.hidden_sizes),
            "activation": self.activation,
        }

    @classmethod
    def from_dict(cls, data: dict) -> PolicySpec:
        return cls(
            obs_dim=int(data["obs_dim"]),
            act_dim=int(data["act_dim"]),
            hidden_sizes=tuple(int(h) for h in data["hidden_sizes"]),
            activation=str(data.get("activation", "tanh")),
        )

    def weight_names(self) -> list[str]:
        """Array names in a weights dict, matching the torch module's state_dict keys."""
        names = ["obs_mean", "obs_std"]
        for i in range(len(self.hidden_sizes)):
            names += [f"hidden.{i}.weight", f"hidden.{i}.bias"]
        return [*names, "mean_head.weight", "mean_head.bias", "log_std"]


ACTIVATIONS = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0)}


@dataclass(frozen=True)
class PolicyWeights:
    """A versioned, self-describing set of policy weights (what travels to workers)."""

    spec: PolicySpec
    arrays: dict[str, np.ndarray]
    version: str = "0"
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = set(self.spec.weight_names()) - set(self.arrays)
        if missing:
            raise ValueError(f"policy weights {self.version!r} miss arrays {sorted(missing)}")


class NumpyGaussianPolicy:
    """Diagonal Gaussian MLP evaluated in numpy; batched over the leading axis.

    >>> policy = NumpyGaussianPolicy(weights)
    >>> actions, logp = policy.sample(obs_batch, rng)
    """

    def __init__(self, weights: PolicyWeights):
        self.spec = weights.spec
        self.version = weights.version
        a = {k: np.asarray(v, dtype=np.float32) for k, v in weights.arrays.items()}
        self._obs_mean, self._obs_std = a["obs_mean"], a["obs_std"]
        self._hidden = [
            (a[f"hidden.{i}.weight"].T.copy(), a[f"hidden.{i}.bias"]) for i in range(len(self.spec.hidden_sizes))
        ]
        self._head = (a["mean_head.weight"].T.copy(), a["mean_head.bias"])
        self.log_std = a["log_std"]
        self._act = ACTIVATIONS[self.spec.activation]

    def mean(self, obs: np.ndarray) -> np.ndarray:
        """Mean action for a batch of observations [B, obs_dim] -> [B, act_dim]."""
        x = np.clip((np.asarray(obs, np.float32) - self._obs_mean) / self._obs_std, -OBS_CLIP, OBS_CLIP)
        for w, b in self._hidden:
            x = self._act(x @ w + b)
        return x @ self._head[0] + self._head[1]

    def log_prob(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        return self._log_prob_at(self.mean(obs), actions)

    def _log_prob_at(self, mu: np.ndarray, actions: np.ndarray) -> np.ndarray:
        z = (actions - mu) / np.exp(self.log_std)
        return -0.5 * np.sum(z * z, axis=-1) - np.sum(self.log_std) - 0.5 * self.spec.act_dim * LOG_2PI

    def sample(self, obs: np.ndarray, rng: np.random.Generator, deterministic: bool = False):
        """Actions and their log-probabilities under this policy."""
        mu = self.mean(obs)
        if deterministic:
            actions = mu
        else:
            noise = rng.standard_normal(mu.shape).astype(np.float32)
            actions = mu + noise * np.exp(self.log_std)
        return actions.astype(np.float32), self._log_prob_at(mu, actions).astype(np.float32)
