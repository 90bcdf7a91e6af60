"""The recurrent (RL^2) policy in numpy and the trial rollout that drives it.

A trial is `trial_episodes` consecutive episodes of one task on one env; the GRU state carries
across the episodes of a trial and is reset only between trials, so the policy can learn the task
in its hidden state (Duan et al. 2016, Wang et al. 2016). At each step the GRU reads

    [clip((obs - mean) / std), previous action, previous reward, done flag of the previous step]

where "previous" is the previous step of the trial (across the episode boundary; zeros at the
trial's first step, and zero for a masked step), and the done flag is 1 at the first step of every
episode after the first. `learner.recurrent.GaussianGRUPolicy` is the torch twin (same array names,
same gate order as `torch.nn.GRU`: reset, update, new); a test checks they agree to 1e-5.
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np

from workers.policy import LOG_2PI, OBS_CLIP, PolicySpec, PolicyWeights
from workers.rollout import empty_episodes, step_alive

INPUT_CLIP = OBS_CLIP  # previous action and reward enter the GRU clipped to +-this (bounded inputs)


def gru_shapes(spec: PolicySpec) -> dict[str, tuple[int, ...]]:
    """Array name -> shape of a GRU policy (`spec.kind == "gru"`, one hidden size: the GRU width)."""
    if len(spec.hidden_sizes) != 1:
        raise ValueError(f"a 'gru' policy has exactly one hidden size (the GRU width), got {spec.hidden_sizes}")
    (hidden,) = spec.hidden_sizes
    d, a = spec.obs_dim, spec.act_dim
    return {
        "obs_mean": (d,), "obs_std": (d,),
        "gru.weight_ih_l0": (3 * hidden, input_dim(spec)), "gru.weight_hh_l0": (3 * hidden, hidden),
        "gru.bias_ih_l0": (3 * hidden,), "gru.bias_hh_l0": (3 * hidden,),
        "mean_head.weight": (a, hidden), "mean_head.bias": (a,), "log_std": (a,),
    }


def input_dim(spec: PolicySpec) -> int:
    """Width of one GRU input: observation, previous action, previous reward, done flag."""
    return spec.obs_dim + spec.act_dim + 2


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # overflow-free logistic


class NumpyRecurrentPolicy:
    """Diagonal Gaussian GRU policy in numpy, batched over the leading axis; state is explicit.

    >>> policy = NumpyRecurrentPolicy(weights)
    >>> hidden = policy.initial_state(num_trials)
    >>> actions, logp, hidden = policy.sample_step(obs, prev_action, prev_reward, prev_done, hidden, rng)
    """

    recurrent = True

    def __init__(self, weights: PolicyWeights):
        if weights.spec.kind != "gru":
            raise ValueError(f"NumpyRecurrentPolicy needs a 'gru' policy spec, got kind {weights.spec.kind!r}")
        self.spec = weights.spec
        self.version = weights.version
        a = {k: np.asarray(v, dtype=np.float32) for k, v in weights.arrays.items()}
        self.hidden_size = self.spec.hidden_sizes[0]
        self._obs_mean, self._obs_std = a["obs_mean"], a["obs_std"]
        self._w_ih, self._w_hh = a["gru.weight_ih_l0"].T.copy(), a["gru.weight_hh_l0"].T.copy()
        self._b_ih, self._b_hh = a["gru.bias_ih_l0"], a["gru.bias_hh_l0"]
        self._head = (a["mean_head.weight"].T.copy(), a["mean_head.bias"])
        self.log_std = a["log_std"]

    def initial_state(self, batch: int) -> np.ndarray:
        """The hidden state at the start of a trial: zeros [batch, hidden]."""
        return np.zeros((batch, self.hidden_size), np.float32)

    def step(self, obs, prev_action, prev_reward, prev_done, hidden) -> tuple[np.ndarray, np.ndarray]:
        """One GRU step for a batch: (mean action [B, A], next hidden [B, H])."""
        x = np.concatenate([
            np.clip((np.asarray(obs, np.float32) - self._obs_mean) / self._obs_std, -OBS_CLIP, OBS_CLIP),
            np.clip(np.asarray(prev_action, np.float32), -INPUT_CLIP, INPUT_CLIP),
            np.clip(np.asarray(prev_reward, np.float32), -INPUT_CLIP, INPUT_CLIP)[:, None],
            np.asarray(prev_done, np.float32)[:, None],
        ], axis=1)
        gi, gh = x @ self._w_ih + self._b_ih, hidden @ self._w_hh + self._b_hh
        h = self.hidden_size
        reset = _sigmoid(gi[:, :h] + gh[:, :h])
        update = _sigmoid(gi[:, h:2 * h] + gh[:, h:2 * h])
        new = np.tanh(gi[:, 2 * h:] + reset * gh[:, 2 * h:])
        hidden = ((1.0 - update) * new + update * hidden).astype(np.float32)
        return (hidden @ self._head[0] + self._head[1]).astype(np.float32), hidden

    def sample_step(self, obs, prev_action, prev_reward, prev_done, hidden, rng: np.random.Generator,
                    deterministic: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Actions, their log-probabilities and the next hidden state."""
        mu, hidden = self.step(obs, prev_action, prev_reward, prev_done, hidden)
        noise = np.zeros_like(mu) if deterministic else rng.standard_normal(mu.shape).astype(np.float32)
        actions = (mu + noise * np.exp(self.log_std)).astype(np.float32)
        z = (actions - mu) / np.exp(self.log_std)
        logp = -0.5 * np.sum(z * z, axis=-1) - np.sum(self.log_std) - 0.5 * self.spec.act_dim * LOG_2PI
        return actions, logp.astype(np.float32), hidden

    def sample(self, obs, rng, deterministic=False, context=None):
        raise TypeError("a recurrent policy needs its state: use workers.recurrent.rollout_trials or "
                        "NumpyRecurrentPolicy.sample_step(obs, prev_action, prev_reward, prev_done, hidden, rng)")


def rollout_trials(
    envs: Sequence[gym.Env],
    policy,
    task_params: dict,
    horizon: int,
    seed: int,
    deterministic: bool = False,
    trial_episodes: int = 1,
    context: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Run one trial of `trial_episodes` episodes per env, all envs in lockstep on the same task.

    Returns `workers.rollout.rollout`'s arrays with episodes trial-major: [trials * n, H, ...]
    (trial 0's episodes 0..n-1, then trial 1's, ...). Seeded like `rollout`: episode e of trial i
    resets with the (i * n + e)-th seed of `seed`, and action noise comes from a stream spawned from
    `seed` alone, so the result does not depend on the worker. Every step of every episode calls
    the policy (padding after an env's episode ended included, with mask 0), so the hidden state
    sequence is a function of the recorded arrays and the learner can recompute it exactly.
    A feed-forward policy is accepted too (episodes then only share the env).
    """
    trials, n = len(envs), trial_episodes
    if trials < 1 or n < 1:
        raise ValueError(f"rollout_trials needs at least one env and trial_episodes >= 1, got {trials}, {n}")
    seeds = np.random.SeedSequence(seed)
    env_seeds, rng = seeds.generate_state(trials * n), np.random.default_rng(seeds.spawn(1)[0])
    act_dim = policy.spec.act_dim
    hidden = policy.initial_state(trials) if policy.recurrent else None
    prev_action, prev_reward = np.zeros((trials, act_dim), np.float32), np.zeros(trials, np.float32)
    parts = []
    for e in range(n):
        obs = np.stack([env.reset(seed=int(env_seeds[i * n + e]), options={"task": task_params})[0]
                        for i, env in enumerate(envs)]).astype(np.float32)
        out = empty_episodes(trials, horizon, obs.shape[1], act_dim)
        alive = np.ones(trials, bool)
        for t in range(horizon):
            if hidden is not None:
                done = np.full(trials, 1.0 if (e > 0 and t == 0) else 0.0, np.float32)
                actions, logp, hidden = policy.sample_step(obs, prev_action, prev_reward, done, hidden, rng,
                                                           deterministic)
            else:
                actions, logp = policy.sample(obs, rng, deterministic, context=context)
            out["obs"][:, t], out["actions"][:, t], out["logp"][:, t] = obs, actions, logp
            out["mask"][:, t] = alive
            step_alive(envs, actions, alive, obs, out, t)
            prev_action = actions * out["mask"][:, t, None]
            prev_reward = out["rewards"][:, t] * out["mask"][:, t]
        parts.append(out)
    return _trial_major(parts)


def _trial_major(parts: list[dict]) -> dict:
    """Per-episode-index parts [trials, H, ...] -> one dict [trials * n, H, ...], trial-major."""
    out = {k: np.stack([p[k] for p in parts], axis=1) for k in parts[0] if k != "guard_trips"}
    out = {k: v.reshape(-1, *v.shape[2:]) for k, v in out.items()}
    out["guard_trips"] = sum(p["guard_trips"] for p in parts)
    return out
