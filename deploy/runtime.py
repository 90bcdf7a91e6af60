"""RobotRuntime: a pulled policy directory driving a `Robot` behind the safety layer.

Loading reads only ``manifest.json``, ``weights.safetensors`` (content digest and array schema verified by
:class:`policy.artifact.PolicyArtifact`) and, in a directory made by ``fleet pull``, its ``pull.json`` (the
digest verified at pull time, checked again); nothing else in the directory is opened, so a stray pickle
there is never executed. Every step: observation schema check -> numpy policy -> :class:`SafetyLayer` -> robot.

Usage::

    runtime = RobotRuntime("policies/reach-meta")
    result = runtime.run_episode(connect_robot("sim:kuka-0"), task={"goal": [0.6, 0.1, 0.4]}, seed=0)
    print(result["return"], result["success"], result["safe_stops"])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from deploy.pull_record import recorded_digest
from deploy.robot import Robot
from deploy.safety import ObservationSchemaError, SafetyConfig, SafetyLayer
from policy import NumpyGaussianPolicy
from policy.artifact import ArtifactError, PolicyArtifact


class RobotRuntime:
    """Runs a pulled policy directory on a Robot behind the safety layer.

    Args:
        policy_dir: A directory holding a policy artifact (``weights.safetensors`` + ``manifest.json``).
        safety: Limits for the safety layer.
        deterministic: Send the policy's mean action (True) or sample around it.
        expected_digest: If given (e.g. the registry's ``content_sha256`` tag), the artifact must match it too;
            a directory made by ``fleet pull`` must also match the digest its ``pull.json`` records.

    Raises :class:`policy.artifact.ArtifactError` for a missing, tampered or inconsistent artifact.
    """

    def __init__(self, policy_dir: str | Path, safety: SafetyConfig | None = None, deterministic: bool = True,
                 expected_digest: str | None = None):
        artifact = PolicyArtifact.load(policy_dir, expected_digest=recorded_digest(policy_dir),
                                       expected_from="digest `fleet pull` verified (pull.json)")
        if expected_digest is not None and artifact.digest != expected_digest:
            raise ArtifactError(f"content sha256 {artifact.digest} does not match the expected {expected_digest}")
        self.manifest = artifact.manifest
        self.policy = NumpyGaussianPolicy(artifact.weights)
        self.deterministic = deterministic
        obs_shape, low, high = _spaces(self.manifest, artifact.weights.spec)
        self._manifest_bounds = (low, high)
        try:
            self.safety = SafetyLayer(obs_shape, low, high, safety)
        except ValueError as exc:
            raise ArtifactError(f"manifest action space does not admit a safety layer: {exc}") from None
        self._rng = np.random.default_rng()

    @property
    def horizon(self) -> int | None:
        """The episode length the policy was trained for (``manifest["fleet"]["horizon"]``)."""
        horizon = (self.manifest.get("fleet") or {}).get("horizon")
        return int(horizon) if isinstance(horizon, int) and horizon > 0 else None

    def act(self, obs: np.ndarray) -> tuple[np.ndarray, dict]:
        """The action to send for one observation: schema check -> policy -> safety filter.

        Raises :class:`ObservationSchemaError` for a wrong shape or type. A non-finite observation never
        reaches the policy: it yields the safe action with ``info["safe_stop"] = True``.
        """
        obs = self.safety.check_observation(obs)
        proposed = None
        if np.isfinite(obs).all():
            actions, _ = self.policy.sample(obs.reshape(1, -1), self._rng, deterministic=self.deterministic)
            proposed = actions[0]
        return self.safety.filter(obs, proposed)

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
                    seed: int | None = None, on_frame: Callable[[np.ndarray], None] | None = None) -> dict:
        """Run one episode; returns ``{"return", "steps", "success", "safe_stops", "clipped", "rate_limited",
        "done"}`` (success = the robot's ``info["success"]`` at the last step).

        ``max_steps`` defaults to the manifest's horizon; ``seed`` seeds the robot's reset and, with
        ``deterministic=False``, the action noise; ``on_frame`` receives ``robot.frame()`` after the reset and
        after every step when the robot renders.
        """
        max_steps = self.horizon if max_steps is None else max_steps
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive int (the manifest has no fleet.horizon), got {max_steps!r}")
        self.check_robot(robot)
        self._rng = np.random.default_rng(seed)
        self.safety.reset()
        before = dict(self.safety.counters)
        obs = robot.reset(task=task, seed=seed)
        _emit_frame(robot, on_frame)
        total, steps, step = 0.0, 0, None
        while steps < max_steps:
            action, _ = self.act(obs)
            step = robot.act(action)
            steps += 1
            total += float(step.reward) if math.isfinite(step.reward) else 0.0
            obs = step.observation
            _emit_frame(robot, on_frame)
            if step.done:
                break
        counters = {k: self.safety.counters[k] - before[k] for k in ("safe_stops", "clipped", "rate_limited")}
        success = bool(step is not None and step.info.get("success", False))
        return {"return": total, "steps": steps, "success": success, "done": bool(step is not None and step.done),
                **counters}


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
