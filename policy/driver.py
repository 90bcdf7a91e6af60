"""`PolicyDriver`: any policy kind stepped one observation at a time, with the state each kind needs.

What a deployed policy needs besides the observation depends on its kind, and the manifest says which:

- feed-forward (``kind: mlp``, ``conditioning: none``): nothing;
- task-conditioned (``conditioning`` concat / additive / multihead / film): the task vector, built from the
  task's params by :class:`policy.taskvec.TaskVectorEncoder` from ``manifest["conditioning"]`` - the code
  training used (:meth:`set_task`) - or, when that section carries ``fixed`` (``{"vector": [...], ...}``: a context
  vector fixed at registration, e.g. a belief policy's posterior mean or an RMA policy's latent estimate registered
  by ``fleet adapt``), that vector whatever task is named (the task still goes to the robot). A fixed vector that is
  no task vector (RMA's z) comes without a task encoding: nothing is built from task params;
- recurrent (any policy with ``recurrent = True``, ``initial_state(batch)`` and ``sample_step(obs, prev_action,
  prev_reward, prev_done, state, rng, deterministic)``: RL^2's GRU, or any other policy with that interface):
  the state, carried across the steps and the episodes of a trial as in ``workers.recurrent.rollout_trials``
  (previous action and reward across episode boundaries, done flag 1 at the first step of every episode after
  the first); :meth:`begin_trial` resets it. (Training also steps the state through the padding after an episode
  that ends before the horizon; a robot that has stopped gives no such steps, so the two agree exactly for
  episodes that run to the horizon, as the fleet's families do);
- context (PEARL, ``kind: sac``): the task latent z - from the prior N(0, I), from a posterior the manifest
  carries (``manifest["posterior"]``, registered by ``fleet adapt``), or inferred from transitions with the
  numpy context encoder (:meth:`infer`);
- belief (``kind: belief``, task inference): recurrent, its state the particle belief over the task vector
  (:class:`policy.belief.BeliefState`); :meth:`snapshot` / :meth:`restore` keep a belief to act with again.
- RMA (``kind: rma``, adaptive): recurrent, its state the robot's own (obs, action) history; while
  :attr:`latents` is a list, the adaptation module's estimate z of every step goes into it, and with
  :attr:`fixed_latent` set the actor acts on that z instead of its running estimate (:meth:`fix_latent`).

Every :meth:`act` is timed (``policy_s`` / ``policy_steps``: the policy's own time, inference included).

>>> driver = PolicyDriver(artifact.weights, artifact.manifest)
>>> driver.set_task({"goal": [0.6, 0.1, 0.4]})        # conditioned policies; others ignore the params
>>> driver.begin_trial(rng); driver.begin_episode()
>>> action = driver.act(obs, rng, deterministic=True); driver.record(obs, action, reward, next_obs)
"""

from __future__ import annotations

import copy
import time

import numpy as np

from policy.context import ContextEncoder
from policy.factory import make_policy
from policy.kinds import policy_kind
from policy.spec import PolicyWeights
from policy.taskvec import TaskVectorEncoder


class PolicyDriver:
    """One policy of any kind, driven step by step (batch of one) with its task vector, state or latent."""

    def __init__(self, weights: PolicyWeights, manifest: dict | None = None):
        manifest = manifest or {}
        self.spec, self.version = weights.spec, weights.version
        self.policy = make_policy(weights)
        self.recurrent = bool(getattr(self.policy, "recurrent", False))
        kind = policy_kind(self.spec)
        self.latent, self.belief = kind.latent, kind.belief
        # a recurrent policy that reads a task vector (e.g. a belief) infers it itself: it is never told the task
        self.conditioned = not (self.latent or self.recurrent) and self.spec.conditioning != "none"
        self.task_vectors: TaskVectorEncoder | None = None
        self.fixed_vector: np.ndarray | None = None
        if self.conditioned:
            section = manifest.get("conditioning")
            if not isinstance(section, dict):
                raise ValueError(f"policy {self.version!r} is task-conditioned ({self.spec.conditioning!r}) but its "
                                 "manifest has no 'conditioning' section (encoding, scaling, training tasks) to build "
                                 "task vectors with; re-publish it with this version of metafleet")
            self.fixed_vector = read_fixed_vector(section.get("fixed"), self.spec.context_dim)
            if self.fixed_vector is None or "encoding" in section:  # task params -> vectors (else: none to build)
                self.task_vectors = TaskVectorEncoder.from_manifest(section)
                if self.task_vectors.dim != self.spec.context_dim:
                    raise ValueError(f"manifest 'conditioning' builds task vectors of length {self.task_vectors.dim}, "
                                     f"the network takes {self.spec.context_dim}")
        self.encoder = ContextEncoder(weights) if self.latent else None
        self.posterior = read_posterior(manifest.get("posterior"), self.spec.context_dim) if self.latent else None
        self.context: np.ndarray | None = self.fixed_vector  # the task vector or latent z the policy reads
        self.task_held_out = False
        self._state = None
        self._prev: tuple[np.ndarray, float] = (np.zeros(self.spec.act_dim, np.float32), 0.0)
        self._episodes_in_trial = 0
        self._first_step = True
        self.transitions: list[tuple[np.ndarray, np.ndarray, float, np.ndarray]] = []
        self.estimates_latent = hasattr(self.policy, "latent_from_history")  # RMA: z from the robot's history
        self.latents: list[np.ndarray] | None = None  # RMA: z at every step while a list (on-robot adaptation)
        self.fixed_latent: np.ndarray | None = None  # RMA: the z the actor acts on instead of its estimate
        self.policy_s, self.policy_steps = 0.0, 0  # time spent in the policy (inference included), steps timed

    # ---- task vector (conditioned) and latent (PEARL) ------------------------------------------------
    def set_task(self, params: dict | None, family: str | None = None) -> None:
        """The task a conditioned policy is told; a no-op for other kinds (they infer it, or need none)."""
        if not self.conditioned:
            return
        if self.fixed_vector is not None:  # acts on the vector it was registered with; the task goes to the robot
            encoder = self.task_vectors
            self.task_held_out = bool(params) and encoder is not None and encoder.training_index(params, family) is None
            self.context = self.fixed_vector
            return
        if not params:
            names = self.task_vectors.to_manifest()["param_names"]
            raise ValueError(f"policy {self.version!r} is task-conditioned ({self.spec.conditioning!r}, "
                             f"{self.task_vectors.encoding} task vectors): name the task, e.g. --task KEY=VALUE "
                             f"for each of its params {names}")
        self.task_held_out = self.task_vectors.training_index(params, family) is None
        self.context = self.task_vectors.encode(params, family).astype(np.float32)

    def set_latent(self, z) -> None:
        """Act with this task latent z (PEARL)."""
        z = np.asarray(z, np.float32).reshape(-1)
        if z.shape != (self.spec.context_dim,) or not np.all(np.isfinite(z)):
            raise ValueError(f"PEARL policy {self.version!r} takes a finite latent z of length "
                             f"{self.spec.context_dim}, got shape {z.shape}")
        self.context = z

    def fix_latent(self, z) -> None:
        """RMA: act on this z (e.g. the mean estimate of some context episodes) instead of the running estimate;
        None goes back to the estimate."""
        if not self.estimates_latent:
            raise ValueError(f"policy {self.version!r} is a {self.spec.kind!r} policy: only an RMA policy estimates "
                             "a latent from its history")
        if z is None:
            self.fixed_latent = None
            return
        z = np.asarray(z, np.float32).reshape(-1)
        if z.shape != (self.spec.context_dim,) or not np.all(np.isfinite(z)):
            raise ValueError(f"RMA policy {self.version!r} takes a finite latent z of length {self.spec.context_dim}, "
                             f"got shape {z.shape}")
        self.fixed_latent = z

    def prior_latent(self, rng: np.random.Generator) -> np.ndarray:
        """z ~ N(0, I): what PEARL acts with before it has seen any of the task."""
        return rng.standard_normal(self.spec.context_dim).astype(np.float32)

    def infer(self, transitions=None) -> tuple[np.ndarray, np.ndarray]:
        """(mu, var) of q(z | transitions) with the numpy encoder (default: the transitions recorded so far)."""
        if self.encoder is None:
            raise ValueError(f"policy {self.version!r} is a {self.spec.kind!r} policy: only a PEARL ('pearl') policy "
                             "infers its task from context transitions")
        transitions = self.transitions if transitions is None else transitions
        if not transitions:
            return np.zeros(self.spec.context_dim), np.ones(self.spec.context_dim)
        obs, actions, rewards, next_obs = (np.asarray(x, np.float64) for x in zip(*transitions))
        return self.encoder.posterior(obs, actions, rewards, next_obs)

    # ---- trials and episodes -------------------------------------------------------------------------
    def begin_trial(self, rng: np.random.Generator | None = None) -> None:
        """Start a trial: a recurrent policy's state is reset; a PEARL policy without a latent yet takes the
        manifest's posterior (an adapted artifact) or, failing that, a prior sample."""
        if self.recurrent:
            self._state = self.policy.initial_state(1)
            self._prev = (np.zeros(self.spec.act_dim, np.float32), 0.0)
        self._episodes_in_trial = 0
        if self.latent and self.context is None:
            rng = rng or np.random.default_rng()
            self.set_latent(self.posterior["z"] if self.posterior else self.prior_latent(rng))

    def begin_episode(self) -> None:
        """Start an episode of the current trial (a trial begins on first use)."""
        if self.recurrent and self._state is None:
            self.begin_trial()
        self._first_step = True
        self._episodes_in_trial += 1

    @property
    def episodes_in_trial(self) -> int:
        return self._episodes_in_trial

    def snapshot(self) -> dict:
        """A copy of the recurrent trial (state, previous action/reward, episodes so far), for :meth:`restore`."""
        if not self.recurrent:
            raise ValueError(f"policy {self.version!r} keeps no state across steps: nothing to snapshot")
        return copy.deepcopy({"state": self._state, "prev": self._prev, "episodes": self._episodes_in_trial})

    def restore(self, snapshot: dict) -> None:
        """Continue from a :meth:`snapshot` (a copy of it: the snapshot can be restored again)."""
        snapshot = copy.deepcopy(snapshot)
        self._state, self._prev, self._episodes_in_trial = snapshot["state"], snapshot["prev"], snapshot["episodes"]

    def belief_summary(self) -> dict:
        """A belief policy's current belief over the task vector: weighted mean and std (lists)."""
        if not self.belief:
            raise ValueError(f"policy {self.version!r} is a {self.spec.kind!r} policy, not a belief policy")
        if self._state is None:
            self.begin_trial()
        return {"mean": self._state.mean()[0].tolist(), "std": self._state.std()[0].tolist()}

    def act(self, obs: np.ndarray, rng: np.random.Generator, deterministic: bool = True) -> np.ndarray:
        """The policy's action [act_dim] for one observation."""
        obs = np.asarray(obs, np.float32).reshape(1, -1)
        started = time.perf_counter()
        if self.fixed_latent is not None:  # RMA with its z fixed: the actor alone, no history
            actions, _ = self.policy.actor.sample(obs, rng, deterministic, context=self.fixed_latent)
        elif self.recurrent:
            if self._state is None:
                self.begin_trial(rng)
            done = 1.0 if (self._first_step and self._episodes_in_trial > 1) else 0.0
            prev_action, prev_reward = self._prev
            actions, _, self._state = self.policy.sample_step(
                obs, prev_action[None], np.asarray([prev_reward], np.float32), np.asarray([done], np.float32),
                self._state, rng, deterministic)
        else:
            if (self.conditioned or self.latent) and self.context is None:
                if self.latent:
                    self.begin_trial(rng)
                else:
                    self.set_task(None)  # raises, naming the params to pass
            actions, _ = self.policy.sample(obs, rng, deterministic, context=self.context)
        self.policy_s += time.perf_counter() - started
        self.policy_steps += 1
        if self.latents is not None and self.fixed_latent is None:  # RMA adapting: z again, outside the timing
            self.latents.append(self.policy.latent_from_history(obs, self._state)[0])
        self._first_step = False
        return np.asarray(actions[0], np.float32)

    def record(self, obs: np.ndarray, action: np.ndarray, reward: float, next_obs: np.ndarray,
               keep_transition: bool = False) -> None:
        """What followed an action: a recurrent policy's next input, and a PEARL context transition if kept."""
        reward = float(reward) if np.isfinite(reward) else 0.0
        self._prev = (np.asarray(action, np.float32).reshape(-1), reward)
        if keep_transition:
            self.transitions.append((np.asarray(obs, np.float64).reshape(-1), np.asarray(action, np.float64),
                                     reward, np.asarray(next_obs, np.float64).reshape(-1)))


def read_posterior(section, dim: int) -> dict | None:
    """A manifest's ``posterior`` (mu, var, z lists of length `dim`) as arrays; None when absent."""
    if section is None:
        return None
    try:
        out = {key: np.asarray(section[key], np.float64).reshape(-1) for key in ("mu", "var", "z")}
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"manifest 'posterior' must hold mu, var and z lists: {exc!r}") from None
    if any(v.shape != (dim,) or not np.all(np.isfinite(v)) for v in out.values()) or np.any(out["var"] <= 0):
        raise ValueError(f"manifest 'posterior' needs finite mu, z and positive var of length {dim}")
    return out


def read_fixed_vector(section, dim: int) -> np.ndarray | None:
    """``manifest["conditioning"]["fixed"]["vector"]`` (a task vector fixed at registration) as float32 [dim];
    None when absent."""
    if section is None:
        return None
    vector = section.get("vector") if isinstance(section, dict) else None
    try:
        out = np.asarray(vector, np.float64).reshape(-1)
    except (TypeError, ValueError):
        out = np.zeros(0)
    if vector is None or out.shape != (dim,) or not np.all(np.isfinite(out)):
        raise ValueError(f"manifest 'conditioning.fixed' must hold 'vector': {dim} finite numbers (the task vector "
                         f"the policy acts with), got {vector!r}")
    return out.astype(np.float32)


def manifest_families(manifest: dict) -> list[str]:
    """The task families a policy was trained on: ``fleet.family`` (a name, or a mixture's mapping)."""
    family = (manifest.get("fleet") or {}).get("family") or manifest.get("family") or "reach"
    return sorted(family) if isinstance(family, dict) else [str(family)]


def choose_family(manifest: dict, task: dict | None) -> tuple[str, dict | None]:
    """(family, params without ``family``): the family the task names (``family=NAME``), else the only one,
    else the manifest's ``default_family``; a ValueError for an unknown family or a mixture with neither.
    A mixture never silently runs its first family."""
    params = None if task is None else {k: v for k, v in task.items() if k != "family"}
    families, named = manifest_families(manifest), (task or {}).get("family")
    if named is not None:
        if named not in families:
            raise ValueError(f"unknown family {named!r}: the policy was trained on {families}; pass "
                             f"--task family=NAME with one of them")
        return str(named), params
    if len(families) == 1:
        return families[0], params
    default = manifest.get("default_family")
    if default not in families:
        raise ValueError(f"the policy was trained on a mixture of families {families} and its manifest names no "
                         f"default_family: pass --task family=NAME with one of them")
    return str(default), params
