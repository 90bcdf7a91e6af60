"""The recurrent (RL^2) Gaussian GRU policy in numpy; its state is explicit.

At each step the GRU reads

    [clip((obs - mean) / std), previous action, previous reward, done flag of the previous step]

where "previous" is the previous step of the trial (across the episode boundary; zeros at the
trial's first step, and zero for a masked step), and the done flag is 1 at the first step of every
episode after the first. `learner.recurrent.GaussianGRUPolicy` is the torch twin (same array names,
same gate order as `torch.nn.GRU`: reset, update, new); a test checks they agree to 1e-5.
"""

from __future__ import annotations

import numpy as np

from policy.spec import INPUT_CLIP, LOG_2PI, OBS_CLIP, PolicyWeights


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # overflow-free logistic


class NumpyRL2Policy:
    """Diagonal Gaussian GRU policy in numpy, batched over the leading axis; state is explicit.

    >>> policy = NumpyRL2Policy(weights)
    >>> hidden = policy.initial_state(num_trials)
    >>> actions, logp, hidden = policy.sample_step(obs, prev_action, prev_reward, prev_done, hidden, rng)
    """

    recurrent = True

    def __init__(self, weights: PolicyWeights):
        if weights.spec.kind != "rl2":
            raise ValueError(f"NumpyRL2Policy needs an 'rl2' policy spec, got kind {weights.spec.kind!r}")
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
                        "NumpyRL2Policy.sample_step(obs, prev_action, prev_reward, prev_done, hidden, rng)")
