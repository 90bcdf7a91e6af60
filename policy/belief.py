"""The task-inference ("belief") policy in numpy: a task-conditioned actor, a learned task model and a
particle filter over the task vector, updated at every step.

A new task is learned by inference, not by a gradient step: the policy keeps a belief over the task vector
z (the task's params, standardised as in training) as weighted particles. Every transition (obs, action,
reward, next obs) reweights them by how well the learned reward model r(obs, action, next obs, z) explains
the reward received (a Student-t likelihood, robust to the model's error near reward discontinuities such as
a success bonus); when the effective sample size drops below half, they are resampled and jittered
(a regularised particle filter). A particle belief can settle, confidently, on a wrong task and then explain
nothing it sees - its particles all predict the same wrong rewards, so reweighting cannot move it. With `recover`
(on by default) the belief is a mixture: the particles, and with a small hazard the prior; every transition is
scored on fresh prior draws too, and when even the best particle explains it far worse than the prior does, the
prior's posterior share is resampled into the particles (:func:`prior_share`, `NumpyBeliefPolicy._rejuvenate`);
a belief that explains its rewards is left alone. The actor is the multi-task policy trained with the true z (the
oracle); here it acts with z drawn from the belief every `resample_every` steps (posterior sampling), so it explores
where the task is uncertain and goes for the task once the belief has settled. The belief carries across the
episodes of a trial: it is the policy's recurrent state (`initial_state` / `sample_step`, like the RL^2 GRU),
so workers, evaluation and the robot runtime drive it as any recurrent policy.

Arrays (`belief_shapes`): the actor (a concat-conditioned Gaussian MLP, `policy.mlp` names), the task model
`model.hidden.{i}.*` / `model.out.*` (ReLU MLP on [normalised obs, action, normalised next obs, z]), the
prior box `belief.low` / `belief.high` (the training tasks' z range) and `belief.settings` =
[particles, resample_every, likelihood scale, jitter]; optionally (`spec.dynamics_sizes`) a dynamics model
`dynamics.*` p(s' | s, a, z) whose next-observation likelihood joins the reward's (:class:`DynamicsTwin`), so that z
can hold what only the dynamics reveal (a robot's joint gains).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from policy.mlp import NumpyGaussianPolicy
from policy.spec import BELIEF_SETTINGS as SETTINGS
from policy.spec import INPUT_CLIP, OBS_CLIP, PolicyWeights

STUDENT_NU = 3.0  # the likelihood's degrees of freedom: heavy tails, one badly predicted reward cannot erase the truth
# Recovery from a confident wrong belief (`recover`): the belief is a mixture of the particles (1 - HAZARD) and the
# prior (HAZARD) - a small chance that the truth lies where no particle is. Each transition is also scored on
# PROBES x particles fresh prior draws. When even the best particle explains it TRIGGER_BAYES_FACTOR times worse than
# the prior does on average (strong evidence, Jeffreys' scale) every particle is contradicted, and the prior's
# posterior share is resampled into the particles; a reward that some particle explains is the reweighting's job
# (a success bonus that flips at the edge of a right belief is one: some particles straddle the edge). HAZARD is
# about the measured rate of the failure it guards against (results/belief-robustness.json: 1.8 % of episodes end
# confident and wrong without it, ~4e-4 per transition): large enough that a belief every transition contradicts
# hands most of its mass to the prior within a step or two, small enough that one contradicted reward moves little.
RECOVERY_HAZARD = 0.001
RECOVERY_PROBES = 0.25
TRIGGER_BAYES_FACTOR = 10.0


@dataclass
class BeliefState:
    """The belief of a batch of B trials: particles [B, N, C], log-weights [B, N], the z acted with [B, C],
    the trial's step count [B], and the previous observation [B, D] (the transition's start)."""

    particles: np.ndarray
    log_weights: np.ndarray
    z: np.ndarray
    steps: np.ndarray
    prev_obs: np.ndarray

    def mean(self) -> np.ndarray:
        """The belief's weighted mean z [B, C]."""
        w = _normalised(self.log_weights)
        return np.einsum("bn,bnc->bc", w, self.particles)

    def std(self) -> np.ndarray:
        """The belief's weighted standard deviation per dimension [B, C]."""
        w, mu = _normalised(self.log_weights), self.mean()
        return np.sqrt(np.einsum("bn,bnc->bc", w, (self.particles - mu[:, None]) ** 2))

    # ---- (de)serialisation: a belief that travels (stateless serving, a snapshot) ------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The state as named arrays (copies: float64, ``steps`` int64, ``prev_obs`` float32); inverse of
        :meth:`from_arrays`."""
        return {"particles": np.array(self.particles, np.float64),
                "log_weights": np.array(self.log_weights, np.float64), "z": np.array(self.z, np.float64),
                "steps": np.array(self.steps, np.int64), "prev_obs": np.array(self.prev_obs, np.float32)}

    @classmethod
    def from_arrays(cls, arrays: dict, particles: int, context_dim: int, obs_dim: int) -> BeliefState:
        """A state from :meth:`to_arrays`' arrays, checked against the policy (N particles over a task vector of
        length C, observations of length D): ValueError naming the array, its shape and the one expected."""
        if not isinstance(arrays, dict):
            raise ValueError(f"a belief state is a mapping of arrays {STATE_FIELDS}, got {type(arrays).__name__}")
        missing = [k for k in STATE_FIELDS if k not in arrays]
        if missing:
            raise ValueError(f"belief state lacks {missing}; expected the arrays {STATE_FIELDS}")
        try:
            out = {k: np.array(arrays[k], np.int64 if k == "steps" else np.float64) for k in STATE_FIELDS}
        except (TypeError, ValueError) as exc:
            raise ValueError(f"belief state arrays must be numeric: {exc}") from None
        batch = out["steps"].shape[0] if out["steps"].ndim == 1 else -1
        expected = {"particles": (batch, particles, context_dim), "log_weights": (batch, particles),
                    "z": (batch, context_dim), "steps": (batch,), "prev_obs": (batch, obs_dim)}
        for key, shape in expected.items():
            if batch < 0 or out[key].shape != shape:
                raise ValueError(f"belief state {key!r} has shape {out[key].shape}; this policy expects {shape} "
                                 f"(B trials, {particles} particles, task vector {context_dim}, obs {obs_dim})")
            if not np.all(np.isfinite(out[key])):
                raise ValueError(f"belief state {key!r} holds non-finite values")
        if np.any(out["steps"] < 0):
            raise ValueError("belief state 'steps' must be >= 0")
        return cls(out["particles"], out["log_weights"], out["z"], out["steps"], out["prev_obs"].astype(np.float32))

    def to_flat(self) -> np.ndarray:
        """One row of floats per trial [B, S] (fields in STATE_FIELDS order, each flattened): the ``state`` column
        of stateless serving. Inverse: :meth:`from_flat`."""
        arrays, batch = self.to_arrays(), self.steps.shape[0]
        return np.concatenate([arrays[k].reshape(batch, -1).astype(np.float64) for k in STATE_FIELDS], axis=1)

    @classmethod
    def from_flat(cls, flat, particles: int, context_dim: int, obs_dim: int) -> BeliefState:
        """The state of :meth:`to_flat`'s rows [B, S]; ValueError for a wrong length or non-finite values."""
        flat = np.asarray(flat, np.float64)
        size = flat_size(particles, context_dim, obs_dim)
        if flat.ndim != 2 or flat.shape[1] != size:
            raise ValueError(f"a flat belief state has rows of {size} numbers ({particles} particles x {context_dim} "
                             f"+ {particles} log-weights + {context_dim} z + 1 step + {obs_dim} previous obs), got "
                             f"shape {flat.shape}")
        widths = (particles * context_dim, particles, context_dim, 1, obs_dim)
        parts = np.split(flat, np.cumsum(widths)[:-1], axis=1)
        batch = flat.shape[0]
        for name, part in zip(STATE_FIELDS, parts, strict=True):
            if not np.all(np.isfinite(part)):
                raise ValueError(f"belief state {name!r} holds non-finite values")
        steps = parts[3][:, 0]
        if np.any(steps != np.round(steps)):
            raise ValueError(f"belief state 'steps' must be whole numbers, got {steps.tolist()}")
        arrays = dict(zip(STATE_FIELDS, (parts[0].reshape(batch, particles, context_dim), parts[1], parts[2], steps,
                                         parts[4]), strict=True))
        return cls.from_arrays(arrays, particles, context_dim, obs_dim)


STATE_FIELDS = ("particles", "log_weights", "z", "steps", "prev_obs")


def flat_size(particles: int, context_dim: int, obs_dim: int) -> int:
    """Length of one trial's flat belief state (:meth:`BeliefState.to_flat`)."""
    return particles * context_dim + particles + context_dim + 1 + obs_dim


def prior_share(log_weights: np.ndarray, loglik: np.ndarray, probe_loglik: np.ndarray, hazard: float) -> np.ndarray:
    """Posterior share [B] of the prior component of the mixture belief (1 - hazard) x particles + hazard x prior,
    after one transition: hazard p_prior / ((1 - hazard) p_belief + hazard p_prior), where p_belief is the
    transition's likelihood averaged over the particles' weights and p_prior over the prior probes."""
    log_belief = _logsumexp(log_weights - _logsumexp(log_weights)[:, None] + loglik)
    log_prior = log_mean_likelihood(probe_loglik)
    prior, belief = np.log(hazard) + log_prior, np.log1p(-hazard) + log_belief
    return np.exp(prior - np.logaddexp(prior, belief))


def log_mean_likelihood(loglik: np.ndarray) -> np.ndarray:
    """log of the mean likelihood over the last axis (e.g. the prior's evidence from its probes) [B, N] -> [B]."""
    return _logsumexp(loglik) - np.log(loglik.shape[-1])


def student_t(residual: np.ndarray) -> np.ndarray:
    """Student-t log-density of standardised residuals, up to its constant (0 at a residual of 0)."""
    return -0.5 * (STUDENT_NU + 1.0) * np.log1p(residual * residual / STUDENT_NU)


class DynamicsTwin:
    """The numpy twin of `learner.belief_dynamics.DynamicsModel`: a ReLU MLP on [normalised obs, clipped action, z]
    predicting the normalised obs change, and the next observation's log-likelihood under it.

    The likelihood is a Student-t per obs dimension with the published scales (`dynamics.scale`: the measured robust
    residual scale per dimension x the belief's likelihood factor), summed over dimensions and tempered by
    `dynamics.weight` (default 1 / obs_dim, `learner.config` `dynamics_weight`): the D residuals of one transition
    are not D independent pieces of evidence - they share one model's errors, and most dimensions (a goal offset, a
    constant) say little about z - so untempered they would outvote the reward D to 1 and make the belief as
    overconfident as D correlated copies of one observation would."""

    def __init__(self, a: dict[str, np.ndarray], spec):
        d, act = spec.obs_dim, spec.act_dim
        w0 = a["dynamics.hidden.0.weight"]
        self._w_env, self._w_z = w0[:, :d + act].T.copy(), w0[:, d + act:].T.copy()  # per trial / per particle
        self._b0 = a["dynamics.hidden.0.bias"]
        self._layers = [(a[f"dynamics.hidden.{i}.weight"].T.copy(), a[f"dynamics.hidden.{i}.bias"])
                        for i in range(1, len(spec.dynamics_sizes))]
        self._out = (a["dynamics.out.weight"].T.copy(), a["dynamics.out.bias"])
        self.scale = a["dynamics.scale"].astype(np.float64)
        self.weight = float(a["dynamics.weight"][0])
        if not np.all(self.scale > 0) or not self.weight >= 0:
            raise ValueError(f"belief dynamics: scales must be > 0 and the weight >= 0, got {self.scale.tolist()}, "
                             f"{self.weight}")

    def predict(self, obs_norm: np.ndarray, action, z) -> np.ndarray:
        """Normalised obs change [B, N, D] for normalised observations [B, D], actions [B, A], z [B, N, C]."""
        x = np.concatenate([obs_norm, np.clip(np.asarray(action, np.float32), -INPUT_CLIP, INPUT_CLIP)], axis=-1)
        h = np.maximum((x @ self._w_env + self._b0)[:, None, :] + np.asarray(z, np.float32) @ self._w_z, 0.0)
        for w, b in self._layers:
            h = np.maximum(h @ w + b, 0.0)
        return h @ self._out[0] + self._out[1]

    def log_likelihood(self, obs_norm: np.ndarray, action, next_norm: np.ndarray, z) -> np.ndarray:
        """weight x sum over obs dimensions of the Student-t log-likelihood of the observed change [B, N]."""
        observed = (next_norm - obs_norm).astype(np.float64)[:, None, :]
        residual = (observed - self.predict(obs_norm, action, z)) / self.scale
        return self.weight * student_t(residual).sum(axis=-1)


def _logsumexp(x: np.ndarray) -> np.ndarray:
    peak = x.max(axis=-1)
    return peak + np.log(np.exp(x - peak[..., None]).sum(axis=-1))


def _normalised(log_weights: np.ndarray) -> np.ndarray:
    w = np.exp(log_weights - log_weights.max(axis=-1, keepdims=True))
    return w / w.sum(axis=-1, keepdims=True)


class NumpyBeliefPolicy:
    """Task-inference policy, batched over trials; its belief is explicit state (see the module docstring).
    `recover=False` is the plain particle filter, without recovery from a contradicted belief (for comparison).

    >>> policy = NumpyBeliefPolicy(weights)
    >>> state = policy.initial_state(num_trials, rng)
    >>> actions, logp, state = policy.sample_step(obs, prev_action, prev_reward, prev_done, state, rng)
    """

    recurrent = True

    def __init__(self, weights: PolicyWeights, recover: bool = True):
        if weights.spec.kind != "belief":
            raise ValueError(f"NumpyBeliefPolicy needs a 'belief' policy spec, got kind {weights.spec.kind!r}")
        self.spec, self.version = weights.spec, weights.version
        actor_spec = replace(self.spec, kind="mlp", model_sizes=(), dynamics_sizes=())
        self.actor = NumpyGaussianPolicy(PolicyWeights(actor_spec, dict(weights.arrays), weights.version))
        self.log_std = self.actor.log_std
        a = {k: np.asarray(v, np.float32) for k, v in weights.arrays.items()}
        self._obs_mean, self._obs_std = a["obs_mean"], a["obs_std"]
        d, act, c = self.spec.obs_dim, self.spec.act_dim, self.spec.context_dim
        w0 = a["model.hidden.0.weight"]
        self._w_env = w0[:, :2 * d + act].T.copy()  # [2D + A, H]: computed once per trial and step
        self._w_z = w0[:, 2 * d + act:].T.copy()  # [C, H]: per particle
        self._b0 = a["model.hidden.0.bias"]
        self._layers = [(a[f"model.hidden.{i}.weight"].T.copy(), a[f"model.hidden.{i}.bias"])
                        for i in range(1, len(self.spec.model_sizes))]
        self._out = (a["model.out.weight"][0].copy(), float(a["model.out.bias"][0]))
        self._dynamics = DynamicsTwin(a, self.spec) if self.spec.dynamics_sizes else None
        self.low, self.high = a["belief.low"].astype(np.float64), a["belief.high"].astype(np.float64)
        settings = dict(zip(SETTINGS, a["belief.settings"].astype(np.float64).tolist(), strict=True))
        self.particles = int(settings["particles"])
        self.resample_every = max(1, int(settings["resample_every"]))
        self.scale, self.jitter = float(settings["likelihood_scale"]), float(settings["jitter"])
        if self.particles < 2 or not self.scale > 0 or self.jitter < 0 or c != len(self.low):
            raise ValueError(f"belief policy {self.version!r}: bad settings {settings} for a task vector of length {c}")
        # a switch, not a setting: artifacts keep their 4 settings, and before/after run on the same weights
        self.recover = bool(recover)
        self.probes = max(1, round(RECOVERY_PROBES * self.particles))
        self.recoveries = 0  # transitions on which the prior's share was resampled in (diagnostics)

    # ---- the task model ------------------------------------------------------------------
    def _norm(self, obs: np.ndarray) -> np.ndarray:
        return np.clip((np.asarray(obs, np.float32) - self._obs_mean) / self._obs_std, -OBS_CLIP, OBS_CLIP)

    def predict_reward(self, obs, action, next_obs, z) -> np.ndarray:
        """The task model's reward for transitions [B] under task vectors z [B, N, C] -> [B, N]."""
        x = np.concatenate([self._norm(obs), np.clip(np.asarray(action, np.float32), -INPUT_CLIP, INPUT_CLIP),
                            self._norm(next_obs)], axis=-1)
        h = np.maximum((x @ self._w_env + self._b0)[:, None, :] + np.asarray(z, np.float32) @ self._w_z, 0.0)
        for w, b in self._layers:
            h = np.maximum(h @ w + b, 0.0)
        return h @ self._out[0] + self._out[1]

    def predict_delta(self, obs, action, z) -> np.ndarray:
        """The dynamics model's normalised obs change for transitions [B] under task vectors z [B, N, C] ->
        [B, N, D] (a policy without a dynamics model has none: ValueError)."""
        if self._dynamics is None:
            raise ValueError(f"belief policy {self.version!r} has no dynamics model (published without dynamics.*)")
        return self._dynamics.predict(self._norm(obs), action, z)

    # ---- the belief ----------------------------------------------------------------------
    def initial_state(self, batch: int, rng: np.random.Generator | None = None) -> BeliefState:
        """The prior: particles uniform over the training tasks' box; z drawn at the first step."""
        rng = np.random.default_rng(0) if rng is None else rng
        particles = rng.uniform(self.low, self.high, (batch, self.particles, len(self.low)))
        return BeliefState(particles, np.zeros((batch, self.particles)), particles[:, 0].copy(),
                           np.zeros(batch, np.int64), np.zeros((batch, self.spec.obs_dim), np.float32))

    def observe(self, state: BeliefState, obs, action, reward, next_obs, valid: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
        """Reweight each valid trial's particles by the likelihood of one transition; resample when degenerate, or
        rejuvenate from the prior when the transition contradicts every particle (`recover`). Returns the mask of
        the trials rejuvenated."""
        contradicted = np.zeros(len(valid), bool)
        if not valid.any():
            return contradicted
        reward = np.asarray(reward, np.float64)
        loglik = self.log_likelihood(obs, action, reward, next_obs, state.particles)
        share, probes, probe_loglik = np.zeros(len(valid)), None, None
        if self.recover:
            # the probes come from a stream of their own (spawned: the rollout's stream is not advanced), so a trial
            # in which recovery never fires is, bit for bit, the trial without it
            probe_rng = rng.spawn(1)[0]
            probes = probe_rng.uniform(self.low, self.high, (len(valid), self.probes, len(self.low)))
            probe_loglik = self.log_likelihood(obs, action, reward, next_obs, probes)
            gap = log_mean_likelihood(probe_loglik) - loglik.max(axis=1)  # prior's evidence over the best particle's
            contradicted = valid & (gap >= np.log(TRIGGER_BAYES_FACTOR))
            share = prior_share(state.log_weights, loglik, probe_loglik, RECOVERY_HAZARD)
        state.log_weights = np.where(valid[:, None], state.log_weights + loglik, state.log_weights)
        state.log_weights -= state.log_weights.max(axis=1, keepdims=True)
        w = _normalised(state.log_weights)
        ess = 1.0 / np.sum(w * w, axis=1)
        for b in np.flatnonzero(contradicted):
            self._rejuvenate(state, b, w[b], float(share[b]), probes[b], probe_loglik[b], rng)
        for b in np.flatnonzero(valid & ~contradicted & (ess < self.particles / 2)):
            self._resample(state, b, w[b], rng)
        return contradicted

    def log_likelihood(self, obs, action, reward: np.ndarray, next_obs, z: np.ndarray) -> np.ndarray:
        """Student-t log-likelihood (up to a constant: 0 for a transition predicted exactly) of each trial's
        transition [B] under task vectors z [B, N, C] -> [B, N]: the reward's, plus, with a dynamics model, the
        next observation's (`DynamicsTwin.log_likelihood`)."""
        residual = (reward[:, None] - self.predict_reward(obs, action, next_obs, z)) / self.scale
        loglik = student_t(residual)
        if self._dynamics is not None:
            loglik = loglik + self._dynamics.log_likelihood(self._norm(obs), action, self._norm(next_obs), z)
        return loglik

    def _rejuvenate(self, state: BeliefState, b: int, w: np.ndarray, share: float, probes: np.ndarray,
                    probe_loglik: np.ndarray, rng: np.random.Generator) -> None:
        """Trial b's transition contradicts every particle: resample it from the mixture posterior, `share` of the
        mass on the prior probes (weighted by how well each explains the transition), the rest on the particles
        `w` (already reweighted by it). Each part is jittered by its own spread, so the old belief is not smeared
        by the new one's."""
        self.recoveries += 1
        n = self.particles
        mass = np.concatenate([(1.0 - share) * w, share * _normalised(probe_loglik[None])[0]])
        index = np.minimum(np.searchsorted(np.cumsum(mass), (rng.random() + np.arange(n)) / n), len(mass) - 1)
        fresh = index >= n
        chosen = np.empty((n, len(self.low)))
        chosen[~fresh] = self._jittered(state.particles[b, index[~fresh]], rng)
        chosen[fresh] = self._jittered(probes[index[fresh] - n], rng)
        state.particles[b], state.log_weights[b] = chosen, 0.0

    def _resample(self, state: BeliefState, b: int, w: np.ndarray, rng: np.random.Generator) -> None:
        """Systematic resampling of trial b, then Gaussian jitter scaled to the belief's spread."""
        n = self.particles
        positions = (rng.random() + np.arange(n)) / n
        index = np.minimum(np.searchsorted(np.cumsum(w), positions), n - 1)
        state.particles[b] = self._jittered(state.particles[b, index], rng)
        state.log_weights[b] = 0.0

    def _jittered(self, chosen: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Resampled particles [K, C] + Gaussian jitter scaled to their spread (floored), kept near the prior box."""
        if len(chosen) == 0:
            return chosen
        spread = np.maximum(chosen.std(axis=0), 0.01 * (self.high - self.low))
        chosen = chosen + rng.standard_normal(chosen.shape) * self.jitter * spread
        margin = 0.1 * (self.high - self.low)
        return np.clip(chosen, self.low - margin, self.high + margin)

    def _draw(self, state: BeliefState, rows: np.ndarray, rng: np.random.Generator) -> None:
        """z of each trial in `rows` <- one particle drawn by weight (posterior sampling)."""
        w = _normalised(state.log_weights)
        for b in rows:
            state.z[b] = state.particles[b, rng.choice(self.particles, p=w[b])]

    # ---- acting --------------------------------------------------------------------------
    def sample_step(self, obs, prev_action, prev_reward, prev_done, state: BeliefState,
                    rng: np.random.Generator, deterministic: bool = False):
        """Update the belief with the previous transition (unless an episode just began or the trial's env
        had ended: a masked step's action and reward are zero), draw z where due, act.
        Returns actions, their log-probabilities and the state (updated in place)."""
        obs = np.asarray(obs, np.float32)
        prev_action = np.asarray(prev_action, np.float32)
        started = state.steps > 0
        ended = ~np.any(prev_action != 0, axis=1) & (np.asarray(prev_reward) == 0)
        valid = started & (np.asarray(prev_done) == 0) & ~ended
        rejuvenated = self.observe(state, state.prev_obs, prev_action, prev_reward, obs, valid, rng)
        # a just-rejuvenated belief is not acted on before it has seen the next transition: one contradicted
        # reward (a bonus flipping at the goal's edge) must not send the arm off to where the prior's share lies
        due = (state.steps % self.resample_every == 0) & ~rejuvenated
        self._draw(state, np.flatnonzero(due), rng)
        actions, logp = self.actor.sample(obs, rng, deterministic, context=state.z.astype(np.float32))
        state.prev_obs = obs.copy()
        state.steps = state.steps + 1
        return actions, logp, state

    def sample(self, obs, rng, deterministic=False, context=None):
        raise TypeError("a belief policy infers its task over steps: use workers.recurrent.rollout_trials or "
                        "NumpyBeliefPolicy.sample_step(obs, prev_action, prev_reward, prev_done, state, rng)")
