"""The policy as the workers (and robots) see it: a spec plus plain numpy weights.

Workers never import the learner: the learner ships a `PolicyWeights` (spec + arrays) and the
worker evaluates the same Gaussian MLP in numpy. Numpy keeps rollouts single-threaded,
deterministic and free of torch start-up cost inside every actor.
"""

from __future__ import annotations

import itertools
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
    kind: str = "mlp"  # "mlp" (feed-forward) or "gru" (recurrent, RL^2)
    conditioning: str = "none"  # how a task context enters an mlp: see CONDITIONING
    context_dim: int = 0  # length of the task context vector (0 = no context)
    num_heads: int = 1  # output heads (conditioning="multihead": one per training task)

    def __post_init__(self) -> None:
        if self.obs_dim <= 0 or self.act_dim <= 0:
            raise ValueError(f"obs_dim and act_dim must be positive, got {self.obs_dim}, {self.act_dim}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; expected one of {sorted(ACTIVATIONS)}")
        if self.kind not in KINDS:
            raise ValueError(f"unknown policy kind {self.kind!r}; expected one of {KINDS}")
        if self.conditioning not in CONDITIONING:
            raise ValueError(f"unknown conditioning {self.conditioning!r}; expected one of {CONDITIONING}")
        if (self.conditioning == "none") != (self.context_dim == 0):
            raise ValueError(f"conditioning {self.conditioning!r} needs context_dim > 0 exactly when it is "
                             f"not 'none', got context_dim={self.context_dim}")
        if self.num_heads < 1 or (self.num_heads > 1 and self.conditioning != "multihead"):
            raise ValueError(f"num_heads > 1 only with conditioning='multihead', got {self.num_heads}")
        if self.conditioning == "multihead" and self.num_heads != self.context_dim:
            raise ValueError(f"conditioning 'multihead' mixes its heads by the task vector: num_heads "
                             f"({self.num_heads}) must equal context_dim ({self.context_dim})")

    def to_dict(self) -> dict:
        return {
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "hidden_sizes": list(self.hidden_sizes),
            "activation": self.activation,
            "kind": self.kind,
            "conditioning": self.conditioning,
            "context_dim": self.context_dim,
            "num_heads": self.num_heads,
        }

    @classmethod
    def from_dict(cls, data: dict) -> PolicySpec:
        # Fields added after the first artifacts have defaults, so older manifests still load.
        return cls(
            obs_dim=int(data["obs_dim"]),
            act_dim=int(data["act_dim"]),
            hidden_sizes=tuple(int(h) for h in data["hidden_sizes"]),
            activation=str(data.get("activation", "tanh")),
            kind=str(data.get("kind", "mlp")),
            conditioning=str(data.get("conditioning", "none")),
            context_dim=int(data.get("context_dim", 0)),
            num_heads=int(data.get("num_heads", 1)),
        )

    def weight_names(self) -> list[str]:
        """Array names in a weights dict, matching the torch module's state_dict keys."""
        return list(self.weight_shapes())

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Array name -> shape. Unconditioned specs have exactly the first artifacts' arrays; each
        conditioning mode adds its own (concat only widens `hidden.0.weight`)."""
        if self.kind == "gru":  # the recurrent (RL^2) layout lives with its numpy policy
            from workers.recurrent import gru_shapes

            return gru_shapes(self)
        c, sizes = self.context_dim, [self.obs_dim, *self.hidden_sizes]
        shapes: dict[str, tuple[int, ...]] = {"obs_mean": (self.obs_dim,), "obs_std": (self.obs_dim,)}
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            fan_in = a + c if (i == 0 and self.conditioning == "concat") else a
            shapes[f"hidden.{i}.weight"], shapes[f"hidden.{i}.bias"] = (b, fan_in), (b,)
        if self.conditioning == "additive":
            shapes["context_embed.weight"] = (sizes[1], c)
        if self.conditioning == "film":
            for i, h in enumerate(self.hidden_sizes):
                shapes[f"film.{i}.weight"], shapes[f"film.{i}.bias"] = (2 * h, c), (2 * h,)
        if self.conditioning == "multihead":
            shapes["mean_heads.weight"] = (self.num_heads, self.act_dim, sizes[-1])
            shapes["mean_heads.bias"] = (self.num_heads, self.act_dim)
        else:
            shapes["mean_head.weight"], shapes["mean_head.bias"] = (self.act_dim, sizes[-1]), (self.act_dim,)
        shapes["log_std"] = (self.act_dim,)
        return shapes


KINDS = ("mlp", "gru")
CONDITIONING = ("none", "concat", "additive", "multihead", "film")
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
    >>> actions, logp = policy.sample(obs_batch, rng, context=task_vector)  # task-conditioned spec

    A task-conditioned spec (`conditioning` != "none") needs `context`: one task vector [C] for
    the whole batch or one per row [B, C]. The maths mirrors learner.networks.GaussianMLPPolicy.
    """

    recurrent = False

    def __init__(self, weights: PolicyWeights):
        if weights.spec.kind != "mlp":  # e.g. a recurrent RL^2 policy reaching a feed-forward-only consumer
            raise ValueError(f"policy {weights.version!r} is a {weights.spec.kind!r} policy; NumpyGaussianPolicy "
                             "runs 'mlp' policies only (workers.policy.make_policy picks the right one)")
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


def make_policy(weights: PolicyWeights):
    """The numpy policy for `weights.spec.kind`: feed-forward Gaussian MLP or recurrent (RL^2) GRU."""
    if weights.spec.kind == "gru":
        from workers.recurrent import NumpyRecurrentPolicy

        return NumpyRecurrentPolicy(weights)
    return NumpyGaussianPolicy(weights)
