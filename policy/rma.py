"""The RMA policy in numpy (Rapid Motor Adaptation, Kumar et al. 2021): a base policy on obs and z where z, the
robot's extrinsics latent, comes from the last steps of the robot's own (obs, action) history.

Two ways to get z, one set of weights:

- privileged (training phase 1, and the oracle yardstick): z = mu(e), the extrinsics encoder applied to the
  robot's true parameter vector e (`SampleRequest.context`); the policy is feed-forward (`sample`);
- adaptive (on a robot, training phase 2, evaluation): z = psi(history, obs), the adaptation module over the last
  `spec.history` entries [normalised obs, action clipped to [-1, 1]] (oldest first, zeros before the episode's
  first step) and the current normalised obs. The history is the policy's recurrent state, a flat float32 array
  [B, history * (obs + act) + obs + 1] = [entries, previous raw obs, steps so far], so workers, the robot runtime
  and stateless serving carry it exactly as they carry the RL^2 GRU's state. It restarts at every episode (the
  done flag): a robot adapts within its first episode, every episode.

`rma.mode` says which one a weights set uses (1 = adaptive: what is published). The torch twin is
`learner.rma` (same array names; a test checks the two agree).

>>> policy = NumpyRMAPolicy(weights)               # adaptive weights
>>> state = policy.initial_state(batch)
>>> actions, logp, state = policy.sample_step(obs, prev_action, prev_reward, prev_done, state, rng)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from policy.mlp import NumpyGaussianPolicy
from policy.spec import OBS_CLIP, PolicyWeights


def relu_mlp(x: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]], out: tuple[np.ndarray, np.ndarray]):
    """ReLU hidden layers then a linear output (weights pre-transposed)."""
    for w, b in layers:
        x = np.maximum(x @ w + b, 0.0)
    return x @ out[0] + out[1]


class NumpyRMAPolicy:
    """RMA policy: the z-conditioned actor with z from the extrinsics encoder (privileged) or the adaptation module."""

    def __init__(self, weights: PolicyWeights):
        if weights.spec.kind != "rma":
            raise ValueError(f"NumpyRMAPolicy needs an 'rma' policy spec, got kind {weights.spec.kind!r}")
        self.spec = spec = weights.spec
        self.version = weights.version
        a = {k: np.asarray(v, dtype=np.float32) for k, v in weights.arrays.items()}
        actor_spec = dataclasses.replace(spec, kind="mlp", model_sizes=(), privileged_dim=0, history=0,
                                         encoder_sizes=())
        actor_arrays = {k: a[k] for k in actor_spec.weight_names()}
        self.actor = NumpyGaussianPolicy(PolicyWeights(actor_spec, actor_arrays, weights.version))
        self.extrinsics = self._mlp(a, "extrinsics", len(spec.encoder_sizes))
        self.adaptation = self._mlp(a, "adaptation", len(spec.model_sizes))
        self.adaptive = bool(a["rma.mode"][0] >= 0.5)
        self.recurrent = self.adaptive  # workers and the runtime drive an adaptive one through its state
        self.log_std = self.actor.log_std
        self._obs_mean, self._obs_std = a["obs_mean"], a["obs_std"]
        self.entry = spec.obs_dim + spec.act_dim

    @staticmethod
    def _mlp(a: dict, prefix: str, depth: int):
        layers = [(a[f"{prefix}.hidden.{i}.weight"].T.copy(), a[f"{prefix}.hidden.{i}.bias"]) for i in range(depth)]
        return layers, (a[f"{prefix}.out.weight"].T.copy(), a[f"{prefix}.out.bias"])

    # ---- privileged (feed-forward) --------------------------------------------------------------
    def latent_from_params(self, e: np.ndarray) -> np.ndarray:
        """z = mu(e) for the robot vector(s) e [C] or [B, C]."""
        e = np.asarray(e, np.float32)
        if e.shape[-1:] != (self.spec.privileged_dim,):
            raise ValueError(f"policy {self.version!r} (rma, privileged) needs the robot vector of length "
                             f"{self.spec.privileged_dim} (SampleRequest.context), got shape {e.shape}")
        return relu_mlp(e, *self.extrinsics).astype(np.float32)

    def sample(self, obs, rng, deterministic=False, context=None):
        """Privileged weights: actions and log-probs with z = mu(context)."""
        if self.adaptive:
            raise TypeError("an adaptive RMA policy needs its history: use sample_step(obs, prev_action, "
                            "prev_reward, prev_done, state, rng) (workers.recurrent.rollout_trials)")
        return self.actor.sample(obs, rng, deterministic, context=self.latent_from_params(context))

    # ---- adaptive (recurrent) -------------------------------------------------------------------
    def initial_state(self, batch: int) -> np.ndarray:
        """An empty history: zeros [batch, state size]."""
        return np.zeros((batch, self.state_size), np.float32)

    @property
    def state_size(self) -> int:
        return self.spec.history * self.entry + self.spec.obs_dim + 1

    def normalise(self, obs: np.ndarray) -> np.ndarray:
        return np.clip((np.asarray(obs, np.float32) - self._obs_mean) / self._obs_std, -OBS_CLIP, OBS_CLIP)

    def advance(self, obs, prev_action, prev_done, state) -> np.ndarray:
        """The state at this step: a new episode (done flag) empties the history; otherwise the previous step's
        [normalised obs, clipped action] is appended (the oldest entry drops out)."""
        obs = np.asarray(obs, np.float32)
        state = np.array(state, np.float32, copy=True)
        k, d = self.spec.history * self.entry, self.spec.obs_dim
        state[np.asarray(prev_done, np.float32) > 0.5] = 0.0
        started = state[:, -1] > 0
        if started.any():
            entry = np.concatenate([self.normalise(state[:, k:k + d]),
                                    np.clip(np.asarray(prev_action, np.float32), -1.0, 1.0)], axis=1)
            history = np.concatenate([state[:, self.entry:k], entry], axis=1)
            state[started, :k] = history[started]
        state[:, k:k + d] = obs
        state[:, -1] += 1.0
        return state

    def latent_from_history(self, obs, state) -> np.ndarray:
        """z = psi(history, normalised obs) [B, latent] from a state that `advance` brought to this step."""
        k = self.spec.history * self.entry
        x = np.concatenate([state[:, :k], self.normalise(obs)], axis=1)
        return relu_mlp(x, *self.adaptation).astype(np.float32)

    def step(self, obs, prev_action, prev_reward, prev_done, state) -> tuple[np.ndarray, np.ndarray]:
        """(mean action [B, A], next state): the GRU-like interface (the reward is not used: RMA reads
        (obs, action) only)."""
        state = self.advance(obs, prev_action, prev_done, state)
        return self.actor.mean(obs, self.latent_from_history(obs, state)), state

    def sample_step(self, obs, prev_action, prev_reward, prev_done, state, rng: np.random.Generator,
                    deterministic: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Actions, their log-probabilities and the next state (adaptive weights)."""
        if not self.adaptive:
            raise TypeError("a privileged RMA policy acts with the robot vector: use sample(obs, rng, context=e)")
        state = self.advance(obs, prev_action, prev_done, state)
        z = self.latent_from_history(obs, state)
        actions, logp = self.actor.sample(obs, rng, deterministic, context=z)
        return actions, logp, state


def check_adaptive(weights: PolicyWeights) -> None:
    """A published RMA policy is evaluated adaptive (z from its own history), never privileged."""
    if float(weights.arrays["rma.mode"][0]) < 0.5:
        raise ValueError("a published RMA policy is evaluated adaptive (z from its own history): these weights "
                         "are privileged (rma.mode 0: z from the robot's true parameters)")
