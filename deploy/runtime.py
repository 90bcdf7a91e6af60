"""RobotRuntime: a pulled policy directory driving a `Robot` behind the safety layer.

Every policy kind runs (:class:`policy.driver.PolicyDriver`): plain and task-conditioned MLPs (the task vector
built from the task's params exactly as training did, from the manifest's ``conditioning``), recurrent policies
(the state carried across the steps and episodes of a trial; :meth:`RobotRuntime.reset_trial`, or every
``trial_episodes`` episodes), PEARL context policies (z from the prior, from the manifest's posterior, or
inferred on the robot by :meth:`RobotRuntime.adapt`), and mixtures (the family named in the task, or the
manifest's ``default_family``).

Loading reads only ``manifest.json``, ``weights.safetensors`` (content digest and array schema verified by
:class:`policy.artifact.PolicyArtifact`) and, in a directory made by ``fleet pull``, its ``pull.json`` (the
digest verified at pull time, checked again); nothing else in the directory is opened, so a stray pickle
there is never executed. Every step: observation schema check -> numpy policy -> :class:`SafetyLayer` -> robot.

Usage::

    runtime = RobotRuntime("policies/reach-meta")
    result = runtime.run_episode(connect_robot("sim:kuka-0"), task={"goal": [0.6, 0.1, 0.4]}, seed=0)
    print(result["return"], result["success"], result["safe_stops"])
    adapted = runtime.adapt(robot, episodes=3, task=task, seed=0)   # PEARL / belief / RMA: collect + infer, no learner

On-robot adaptation (:meth:`RobotRuntime.adapt`) for the kinds that infer their task or robot: PEARL infers z from
the context episodes with its numpy encoder; a belief policy updates its particle belief at every step of the
context episodes (one trial), and the belief they leave is what every later episode starts from
(:meth:`RobotRuntime.use_prior` goes back to a fresh belief for each episode); an RMA policy estimates its robot's
latent z from its own history at every step of the context episodes, and acts from then on with z fixed to the
mean of those estimates (:meth:`RobotRuntime.use_prior`: back to the running estimate, within each episode).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from deploy.pull_record import PULL_RECORD, recorded_digest
from deploy.robot import Robot
from deploy.safety import ObservationSchemaError, SafetyConfig, SafetyLayer
from policy.artifact import ArtifactError, PolicyArtifact
from policy.driver import PolicyDriver, choose_family, manifest_families


class RobotRuntime:
    """Runs a pulled policy directory on a Robot behind the safety layer.

    Args:
        policy_dir: A directory holding a policy artifact (``weights.safetensors`` + ``manifest.json``), or a
            :class:`PolicyArtifact` its loader has already verified.
        safety: Limits for the safety layer.
        deterministic: Send the policy's mean action (True) or sample around it.
        expected_digest: If given (e.g. the registry's ``content_sha256`` tag), the artifact must match it too;
            a directory made by ``fleet pull`` must also match the digest its ``pull.json`` records.
        trial_episodes: Recurrent policies: episodes sharing one state before it is reset (default: the
            manifest's ``learner.trial_episodes``; None there too: one trial until :meth:`reset_trial`).

    Raises :class:`policy.artifact.ArtifactError` for a missing, tampered or inconsistent artifact.
    """

    def __init__(self, policy_dir: str | Path | PolicyArtifact, safety: SafetyConfig | None = None,
                 deterministic: bool = True, expected_digest: str | None = None, trial_episodes: int | None = None):
        if isinstance(policy_dir, PolicyArtifact):  # already verified by its loader (e.g. `fleet adapt`)
            artifact = policy_dir
        else:
            artifact = PolicyArtifact.load(policy_dir, expected_digest=recorded_digest(policy_dir),
                                           expected_from=PULL_RECORD)
        if expected_digest is not None and artifact.digest != expected_digest:
            raise ArtifactError(f"content sha256 {artifact.digest} does not match the expected {expected_digest}")
        self.manifest = artifact.manifest
        try:
            self.driver = PolicyDriver(artifact.weights, self.manifest)
        except ValueError as exc:
            raise ArtifactError(str(exc)) from None
        self.policy = self.driver.policy
        self.deterministic = deterministic
        if trial_episodes is not None and (not isinstance(trial_episodes, int) or trial_episodes < 1):
            raise ValueError(f"trial_episodes must be a positive int (episodes sharing a recurrent state), got "
                             f"{trial_episodes!r}")
        learner = self.manifest.get("learner") if isinstance(self.manifest.get("learner"), dict) else {}
        trained = learner.get("trial_episodes") if self.driver.recurrent else None
        self.trial_episodes = trial_episodes or (int(trained) if isinstance(trained, int) and trained > 0 else None)
        self.family: str | None = None
        self.task: dict | None = None
        obs_shape, low, high = _spaces(self.manifest, artifact.weights.spec)
        self._manifest_bounds = (low, high)
        try:
            self.safety = SafetyLayer(obs_shape, low, high, safety)
        except ValueError as exc:
            raise ArtifactError(f"manifest action space does not admit a safety layer: {exc}") from None
        self._rng = np.random.default_rng()
        self._keep_context = False
        self._belief_mode: str | None = None  # belief: None (trials as usual), "prior" or "adapted" (see adapt)
        self._adapted: dict | None = None  # belief: the trial snapshot the context episodes left
        self.last_latencies_ms: list[float] = []  # the last episode's step latencies (act: policy + safety), ms
        self.last_success_defined = False

    @property
    def families(self) -> list[str]:
        """The task families the policy was trained on (one, or a mixture's)."""
        return manifest_families(self.manifest)

    def choose_family(self, task: dict | None) -> tuple[str, dict | None]:
        """(family, params without ``family``): see :func:`policy.driver.choose_family`."""
        return choose_family(self.manifest, task)

    def set_task(self, task: dict | None) -> str:
        """Tell the policy its task (family chosen as in :meth:`choose_family`; a conditioned policy builds its
        task vector from the params); returns the family."""
        self.family, self.task = self.choose_family(task)
        self.driver.set_task(self.task, self.family)
        return self.family

    def reset_trial(self) -> None:
        """Start a new trial: a recurrent policy forgets what it inferred (state to zeros)."""
        self.driver.begin_trial(self._rng)

    @property
    def horizon(self) -> int | None:
        """The episode length the policy was trained for (``manifest["fleet"]["horizon"]``)."""
        horizon = (self.manifest.get("fleet") or {}).get("horizon")
        return int(horizon) if isinstance(horizon, int) and horizon > 0 else None

    def act(self, obs: np.ndarray) -> tuple[np.ndarray, dict]:
        """The action to send for one observation: schema check -> policy -> safety filter.

        Raises :class:`ObservationSchemaError` for a wrong shape or type. A non-finite observation never
        reaches the policy: it yields the safe action with ``info["safe_stop"] = True``. ``info["proposed"]``:
        the policy's own action (what a recurrent policy reads back as its previous action).
        """
        obs = self.safety.check_observation(obs)
        proposed = None
        if np.isfinite(obs).all():
            proposed = self.driver.act(obs, self._rng, deterministic=self.deterministic)
        action, info = self.safety.filter(obs, proposed)
        return action, {**info, "proposed": action if proposed is None else proposed}

    def check_robot(self, robot: Robot) -> None:
        """Refuse a robot whose spaces do not fit the policy; narrow the action bounds to the robot's."""
        shape = tuple(int(n) for n in robot.observation_shape)
        if shape != self.safety.observation_shape:
            raise ObservationSchemaError(f"robot observes shape {shape}, but the policy expects "
                                         f"{self.safety.observation_shape} (manifest observation space)")
        low, high = self._manifest_bounds
        r_low = np.asarray(robot.action_low, dtype=np.float32).ravel()
        r_high = np.asarray(robot.action_high, dtype=np.float32).ravel()
        if r_low.shape != low.shape or r_high.shape != high.shape:
            raise ValueError(f"robot takes actions of shape {r_low.shape}, but the policy sends {low.shape}")
        try:  # the tighter of the two: the robot may allow less than the policy was trained with
            self.safety.set_bounds(np.maximum(low, r_low), np.minimum(high, r_high))
        except ValueError as exc:
            raise ValueError(f"robot action bounds [{r_low}, {r_high}] do not fit the policy's: {exc}") from None

    def run_episode(self, robot: Robot, max_steps: int | None = None, task: dict | None = None,
                    seed: int | None = None, on_frame: Callable[[np.ndarray], None] | None = None,
                    reset_trial: bool = False) -> dict:
        """Run one episode; returns ``{"return", "steps", "success", "safe_stops", "clipped", "rate_limited",
        "done"}`` (+ ``"trial_episode"`` for a recurrent policy; success = the robot's ``info["success"]`` at the
        last step).

        ``max_steps`` defaults to the manifest's horizon; ``seed`` seeds the robot's reset and, with
        ``deterministic=False``, the action noise; ``on_frame`` receives ``robot.frame()`` after the reset and
        after every step when the robot renders. ``task`` (``family`` among its keys for a mixture) is told to a
        task-conditioned policy and sent to the robot without ``family``. A recurrent policy's state carries over
        from the previous episode unless ``reset_trial`` or ``trial_episodes`` episodes of this trial have run.
        """
        max_steps = self.horizon if max_steps is None else max_steps
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive int (the manifest has no fleet.horizon), got {max_steps!r}")
        self.check_robot(robot)
        if task is not None or self.family is None:
            self.set_task(task)
        self._rng = np.random.default_rng(seed)
        full = self._belief_mode is None and self.trial_episodes is not None \
            and self.driver.episodes_in_trial >= self.trial_episodes  # a belief's adaptation holds its own trial
        if self._belief_mode == "adapted":  # every episode starts from the belief the context episodes left
            self.driver.restore(self._adapted)
        elif reset_trial or full or self.driver.episodes_in_trial == 0 or self._belief_mode == "prior":
            self.reset_trial()
        self.driver.begin_episode()
        self.safety.reset()
        before = dict(self.safety.counters)
        obs = robot.reset(task=self.task, seed=seed)
        _emit_frame(robot, on_frame)
        total, steps, step, latencies = 0.0, 0, None, []
        while steps < max_steps:
            started = time.perf_counter()
            action, info = self.act(obs)
            latencies.append(time.perf_counter() - started)
            step = robot.act(action)
            steps += 1
            total += float(step.reward) if math.isfinite(step.reward) else 0.0
            self.driver.record(obs, info["proposed"], step.reward, step.observation, self._keep_context)
            obs = step.observation
            _emit_frame(robot, on_frame)
            if step.done:
                break
        counters = {k: self.safety.counters[k] - before[k] for k in ("safe_stops", "clipped", "rate_limited")}
        success = bool(step is not None and step.info.get("success", False))
        trial = {"trial_episode": self.driver.episodes_in_trial} if self.driver.recurrent else {}
        self.last_latencies_ms = [1e3 * s for s in latencies]  # schema check + policy + safety filter, per step
        self.last_success_defined = step is not None and "success" in step.info  # the family reports success
        return {"return": total, "steps": steps, "success": success, "done": bool(step is not None and step.done),
                **trial, **counters}

    def adapt(self, robot: Robot, episodes: int, task: dict | None = None, seed: int = 0,
              max_steps: int | None = None) -> dict:
        """PEARL on the robot, no learner: `episodes` context episodes through the safety layer (episode k acts
        with z sampled from the posterior given episodes 0..k-1; episode 0 from the prior, as the evaluation
        protocol does), then the posterior q(z | all of them) from the numpy encoder, and z sampled from it is
        what the policy acts with from now on. Returns the posterior (mu, var, z), the context episodes'
        results, and the time to collect and to infer (seconds)."""
        if not self.adapts_in_context:
            raise ValueError(f"on-robot adaptation infers a task latent: it needs a PEARL (context), belief or RMA "
                             f"policy, this one is {self.driver.spec.kind!r} ({self.manifest.get('algorithm', '?')})")
        if not isinstance(episodes, int) or episodes < 1:
            raise ValueError(f"adaptation needs at least one context episode, got {episodes!r}")
        if self.driver.belief:
            return self._adapt_belief(robot, episodes, task, seed, max_steps)
        if self.driver.estimates_latent:
            return self._adapt_latent(robot, episodes, task, seed, max_steps)
        rng, self.driver.transitions, results = np.random.default_rng(seed), [], []
        started = time.perf_counter()
        self._keep_context = True
        try:
            for k in range(episodes):
                mu, var = self.driver.infer()
                self.driver.set_latent(self.driver.encoder.sample(mu, var, rng))
                results.append(self.run_episode(robot, max_steps, task, seed + k))
        finally:
            self._keep_context = False
        collected = time.perf_counter()
        mu, var = self.driver.infer()
        z = self.driver.encoder.sample(mu, var, rng)
        self.driver.set_latent(z)
        inferred = time.perf_counter()
        self.driver.posterior = {"mu": mu, "var": var, "z": z.astype(np.float64)}
        return {"mu": mu.tolist(), "var": var.tolist(), "z": z.tolist(), "episodes": results,
                "transitions": len(self.driver.transitions), "collect_s": collected - started,
                "infer_s": inferred - collected, "adapt_s": inferred - started}

    def _adapt_belief(self, robot: Robot, episodes: int, task: dict | None, seed: int, max_steps: int | None) -> dict:
        """A belief policy on the robot: `episodes` context episodes, one trial from the prior, the belief updated
        at every step inside the policy; the belief they leave is then what every episode starts from (until
        :meth:`use_prior`). Returns the belief (mean = ``z``, std), the context episodes' results, the wall time
        of the context episodes (``collect_s``), the policy's time in them (``infer_s``: belief updates and
        actions, every step) and per step (``policy_ms_per_step``)."""
        self._belief_mode, results = None, []
        spent, steps = self.driver.policy_s, self.driver.policy_steps
        started = time.perf_counter()
        for k in range(episodes):  # one trial: reset before the first episode only, whatever trial_episodes says
            self._belief_mode = "prior" if k == 0 else "carry"
            results.append(self.run_episode(robot, max_steps, task, seed + k))
        collected = time.perf_counter()
        self._belief_mode, self._adapted = "adapted", self.driver.snapshot()
        belief = self.driver.belief_summary()
        infer_s, timed = self.driver.policy_s - spent, self.driver.policy_steps - steps
        return {"z": belief["mean"], "mu": belief["mean"], "std": belief["std"], "episodes": results,
                "transitions": sum(r["steps"] for r in results), "collect_s": collected - started,
                "infer_s": infer_s, "adapt_s": collected - started, "policy_steps": timed,
                "policy_ms_per_step": 1e3 * infer_s / max(timed, 1)}

    def _adapt_latent(self, robot: Robot, episodes: int, task: dict | None, seed: int, max_steps: int | None) -> dict:
        """An RMA policy on the robot: `episodes` context episodes acting on the adaptation module's running
        estimate (a fresh history each episode, as always); z = the mean of its estimates over every step of them,
        then fixed (:meth:`PolicyDriver.fix_latent`). Returns z (= ``mu``), the estimates' std, the context
        episodes' results, their wall time and the policy's own time in them, in all and per step."""
        self.driver.fix_latent(None)
        self.driver.latents, spent, steps = [], self.driver.policy_s, self.driver.policy_steps
        started = time.perf_counter()
        try:
            results = [self.run_episode(robot, max_steps, task, seed + k, reset_trial=True) for k in range(episodes)]
        finally:
            latents, self.driver.latents = np.asarray(self.driver.latents, np.float64), None
        collected = time.perf_counter()
        z = latents.mean(0)
        self.driver.fix_latent(z)
        infer_s, timed = self.driver.policy_s - spent, self.driver.policy_steps - steps
        return {"z": z.tolist(), "mu": z.tolist(), "std": latents.std(0).tolist(), "episodes": results,
                "transitions": len(latents), "collect_s": collected - started, "infer_s": infer_s,
                "adapt_s": collected - started, "policy_steps": timed,
                "policy_ms_per_step": 1e3 * infer_s / max(timed, 1)}

    @property
    def adapts_in_context(self) -> bool:
        """Whether :meth:`adapt` applies: the policy infers its task (PEARL, belief) or its robot (RMA) on the robot."""
        return self.driver.latent or self.driver.belief or self.driver.estimates_latent

    def use_prior(self, seed: int | None = None) -> None:
        """Act unadapted: PEARL with a fresh z from the prior N(0, I); a belief policy from a fresh belief (the
        prior) at every episode; RMA on its running estimate of z (from a fresh history every episode)."""
        if self.driver.belief:
            self._belief_mode, self._adapted = "prior", None
            return
        if self.driver.estimates_latent:
            self.driver.fix_latent(None)
            return
        self.driver.set_latent(self.driver.prior_latent(np.random.default_rng(seed)))


def _emit_frame(robot, on_frame) -> None:
    if on_frame is None:
        return
    frame_of = getattr(robot, "frame", None)
    frame = frame_of() if callable(frame_of) else None
    if frame is not None:
        on_frame(frame)


def _spaces(manifest: dict, spec) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """Observation shape and action bounds from ``manifest["spaces"]``, checked against the network."""
    try:
        obs_space, act_space = manifest["spaces"]["observation"], manifest["spaces"]["action"]
        obs_shape = tuple(int(n) for n in obs_space["shape"])
        act_shape = tuple(int(n) for n in act_space["shape"])
        low = np.broadcast_to(np.asarray(act_space["low"], dtype=np.float32), act_shape).ravel()
        high = np.broadcast_to(np.asarray(act_space["high"], dtype=np.float32), act_shape).ravel()
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"manifest 'spaces' must describe observation and action boxes: {exc!r}") from None
    if math.prod(obs_shape) != spec.obs_dim or math.prod(act_shape) != spec.act_dim:
        raise ArtifactError(f"manifest spaces (observation {obs_shape}, action {act_shape}) do not fit the network "
                            f"(obs_dim {spec.obs_dim}, act_dim {spec.act_dim})")
    if not (np.isfinite(low).all() and np.isfinite(high).all()) or (low > high).any():
        raise ArtifactError(f"manifest action bounds must be finite with low <= high, got {low} .. {high}")
    return obs_shape, low, high
