"""The safety layer between a policy and a robot: what leaves it is always bounded, rate-limited, finite.

Guarantees (for every action ``filter`` returns):

- it has the action space's shape and is finite (float32);
- every entry lies in ``[action_low, action_high]``;
- with ``max_action_rate`` set, no entry differs from the previous returned action by more than that
  (after ``reset`` and after a safe stop has reached the hold, motion ramps up from the hold);
- a non-finite observation or proposal is a safe stop, and the policy's proposal for a non-finite observation
  is never used. A safe stop brings each entry from the last sent action to the safe action (zeros) in equal
  per-entry steps over ``stop_ramp_s`` (default 0.5 s: 10 control steps of 0.05 s) and never faster than
  ``max_action_rate``. The ramp is the default because zero is not a hold in every action space: for a legged
  robot's absolute joint targets it is the home pose, and a jump there is a snap. ``stop_ramp_s = 0`` is the
  explicit opt-out: the stop at once (the one step exempt from the rate limit), for delta action spaces (reach,
  push), where zero already holds.

It does *not* check collisions, workspace, joint or force limits beyond the action bounds, nor watch the
robot's own controller: those stay the robot's job (see docs/robots.md).

Usage::

    layer = SafetyLayer((20,), -np.ones(3), np.ones(3))
    obs = layer.check_observation(raw_obs)          # ObservationSchemaError on a wrong shape
    action, info = layer.filter(obs, policy_action)  # info: safe_stop, reason, clipped, rate_limited
    action, info = layer.stop("client gone")        # one step of a safe stop, no observation needed
    actions = layer.ramp_to_hold("client gone")     # the rest of the stop, until the robot holds
    bounded = layer.bound(batch_of_actions)         # stateless: bounds only (serving)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SAFE_ACTIONS = ("zero",)
DEFAULT_STOP_RAMP_S = 0.5  # with the default control step, 10 steps from wherever the robot was to the hold


class ObservationSchemaError(ValueError):
    """An observation that does not match the policy's observation space (shape or type)."""


@dataclass(frozen=True)
class SafetyConfig:
    """How the safety layer limits actions.

    Attributes:
        max_action_rate: Largest change of any action entry from one control step to the next, in
            action units (for reach: 0.5 = half of the largest end-effector step); ``None`` turns the
            rate limit off.
        safe_action: What a safe stop ends on. ``"zero"``: all zeros, which holds position for the
            delta action spaces of the fleet's families.
        stop_ramp_s: How long a safe stop takes to bring every entry from the last sent action to the safe
            action, in seconds (default :data:`DEFAULT_STOP_RAMP_S`); 0 = at once, an explicit opt-out for delta
            action spaces only (on absolute joint targets, a stop at once snaps to the home pose).
        control_period_s: One control step, in seconds: ``stop_ramp_s / control_period_s`` steps make a ramp
            (0.05 s: the half-cheetah's step; set the robot's own, e.g. 1/30 s for the A1, 1/60 s for the arms).
    """

    max_action_rate: float | None = 0.5
    safe_action: str = "zero"
    stop_ramp_s: float = DEFAULT_STOP_RAMP_S
    control_period_s: float = 0.05

    def __post_init__(self) -> None:
        rate = self.max_action_rate
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))
                                 or not math.isfinite(rate) or rate <= 0):
            raise ValueError(f"SafetyConfig.max_action_rate must be a finite number > 0 or None, got {rate!r}")
        for name, low in (("stop_ramp_s", 0.0), ("control_period_s", None)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or (value < low if low is not None else value <= 0):
                raise ValueError(f"SafetyConfig.{name} must be a finite number {'>= 0' if low is not None else '> 0'}"
                                 f", got {value!r}")
        if self.safe_action not in SAFE_ACTIONS:
            raise ValueError(f"SafetyConfig.safe_action must be one of {SAFE_ACTIONS}, got {self.safe_action!r}")


class SafetyLayer:
    """Checks observations and filters proposed actions; see the module docstring for the guarantees."""

    def __init__(self, observation_shape, action_low, action_high, config: SafetyConfig | None = None):
        self.observation_shape = tuple(int(n) for n in observation_shape)
        self.config = config if config is not None else SafetyConfig()
        self.set_bounds(action_low, action_high)
        self.counters = {"steps": 0, "safe_stops": 0, "clipped": 0, "rate_limited": 0}
        self._previous = self._safe.copy()
        self._stop_step: np.ndarray | None = None  # per-entry step of the safe stop in progress (None: none)

    def set_bounds(self, action_low, action_high) -> None:
        """Set the action bounds (finite, low <= high, holding the safe action)."""
        low = np.asarray(action_low, dtype=np.float32)
        high = np.asarray(action_high, dtype=np.float32)
        if low.shape != high.shape or low.ndim != 1 or low.size == 0:
            raise ValueError(f"action bounds must be two 1-D arrays of one shape, got {low.shape} and {high.shape}")
        if not (np.isfinite(low).all() and np.isfinite(high).all()) or (low > high).any():
            raise ValueError(f"action bounds must be finite with low <= high, got low={low} high={high}")
        safe = np.zeros_like(low)
        if (safe < low).any() or (safe > high).any():
            raise ValueError(f"safe action {self.config.safe_action!r} lies outside the action bounds [{low}, {high}]")
        self.action_low, self.action_high, self._safe = low, high, safe

    @property
    def action_shape(self) -> tuple[int, ...]:
        return self.action_low.shape

    def reset(self) -> None:
        """Start a new episode: the previous action becomes the safe action (the robot holds)."""
        self._previous = self._safe.copy()
        self._stop_step = None

    @property
    def holding(self) -> bool:
        """The last action sent is the safe action: a safe stop has finished (or nothing moved yet)."""
        return bool(np.array_equal(self._previous, self._safe))

    def stop(self, reason: str = "stop requested") -> tuple[np.ndarray, dict]:
        """One step of a safe stop without an observation (the caller lost its client, an operator stop);
        ``(action, info)`` as :meth:`filter` returns them."""
        self.counters["steps"] += 1
        return self._safe_stop(reason)

    def ramp_to_hold(self, reason: str = "stop requested") -> list[np.ndarray]:
        """The rest of a safe stop: one action per control step until the robot holds (empty if it does)."""
        actions = []
        while not self.holding:
            actions.append(self.stop(reason)[0])
        return actions

    def bound(self, actions) -> np.ndarray:
        """A batch of proposed actions ``[B, act_dim]`` within the bounds, statelessly (no rate limit: there is
        no previous action, e.g. in serving); a row with a non-finite entry becomes the safe action."""
        proposed = np.asarray(actions, dtype=np.float32).reshape(-1, self._safe.size)
        bounded = np.clip(proposed, self.action_low, self.action_high)
        bounded[~np.isfinite(proposed).all(axis=1)] = self._safe
        return bounded

    def check_observation(self, obs) -> np.ndarray:
        """Return ``obs`` as float32 of the expected shape; raise :class:`ObservationSchemaError` otherwise.

        Non-finite values pass (``filter`` turns them into a safe stop); wrong shapes and non-numbers do not.
        """
        try:
            arr = np.asarray(obs)
        except (ValueError, TypeError) as exc:
            raise ObservationSchemaError(f"observation is not an array of numbers: {exc}") from None
        if arr.dtype.kind not in "iuf":
            raise ObservationSchemaError(
                f"observation must be numeric with shape {self.observation_shape}, got dtype {arr.dtype} "
                f"with shape {arr.shape}")
        if arr.shape != self.observation_shape:
            raise ObservationSchemaError(
                f"observation has shape {arr.shape} ({arr.size} values), expected {self.observation_shape} "
                f"({math.prod(self.observation_shape)} values) as in the policy's manifest")
        return arr.astype(np.float32, copy=True)

    def filter(self, obs: np.ndarray, proposed_action: np.ndarray | None) -> tuple[np.ndarray, dict]:
        """The action to send for ``obs`` given the policy's proposal (``None``: no proposal).

        Returns ``(action, info)`` with ``info = {"safe_stop", "reason", "clipped", "rate_limited"}``;
        ``clipped``/``rate_limited`` count the entries changed by that stage in this step.
        """
        self.counters["steps"] += 1
        reason = self._stop_reason(obs, proposed_action)
        if reason is not None:
            return self._safe_stop(reason)
        self._stop_step = None  # a good step ends a stop; motion resumes rate-limited from where it got to
        action = np.asarray(proposed_action, dtype=np.float32).reshape(self.action_shape)
        bounded = np.clip(action, self.action_low, self.action_high)
        clipped = int(np.count_nonzero(bounded != action))
        limited, rate_limited = bounded, 0
        if self.config.max_action_rate is not None:
            rate = np.float32(self.config.max_action_rate)
            limited = np.clip(bounded, self._previous - rate, self._previous + rate)
            # the bounds again: previous +- rate can reach past them only if previous was already at one.
            limited = np.clip(limited, self.action_low, self.action_high)
            rate_limited = int(np.count_nonzero(limited != bounded))
        self.counters["clipped"] += clipped > 0
        self.counters["rate_limited"] += rate_limited > 0
        self._previous = limited.astype(np.float32)
        info = {"safe_stop": False, "reason": None, "clipped": clipped, "rate_limited": rate_limited}
        return self._previous.copy(), info

    def _stop_reason(self, obs, proposed_action) -> str | None:
        if not np.isfinite(np.asarray(obs, dtype=np.float64)).all():
            return "non-finite observation"
        if proposed_action is None:
            return "no action proposed"
        try:
            action = np.asarray(proposed_action, dtype=np.float64)
        except (TypeError, ValueError):
            return "proposed action is not numeric"
        if action.size != self._safe.size:
            return f"proposed action has {action.size} values, expected {self._safe.size}"
        if not np.isfinite(action).all():
            return "non-finite proposed action"
        return None

    def _safe_stop(self, reason: str) -> tuple[np.ndarray, dict]:
        """One step from the last sent action toward the safe action (all of the way without a ramp)."""
        self.counters["safe_stops"] += 1
        if self._stop_step is None:  # a new stop: each entry gets an equal share of its own way per step
            self._stop_step = self._ramp_step()
        gap = self._safe - self._previous
        moved = self._previous + np.clip(gap, -self._stop_step, self._stop_step)
        # float32 steps do not sum to the gap exactly: the last step lands on the hold itself. The slack is absolute
        # and tiny (not relative to the step), so that landing never moves more than the rate limit allows
        arrived = np.abs(gap) <= self._stop_step + np.float32(5e-7)
        self._previous = np.where(arrived, self._safe, moved).astype(np.float32)
        return self._previous.copy(), {"safe_stop": True, "reason": reason, "clipped": 0, "rate_limited": 0}

    def _ramp_step(self) -> np.ndarray:
        """Per-entry step of a new stop: its distance to the hold over the ramp's steps, at most the rate limit
        (a ramp never moves faster than the policy may); without a ramp, the whole distance."""
        distance = np.abs(self._safe - self._previous)
        if self.config.stop_ramp_s <= 0:
            return distance
        steps = max(1, math.ceil(self.config.stop_ramp_s / self.config.control_period_s - 1e-9))
        step = distance / np.float32(steps)
        if self.config.max_action_rate is not None:
            step = np.minimum(step, np.float32(self.config.max_action_rate))
        return step.astype(np.float32)
