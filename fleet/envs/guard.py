"""GuardWrapper: keeps non-finite actions out of the simulator and ends episodes whose state explodes.

``fleet.make_env`` wraps every env (built-in and plugin) in it. Per step:

1. A non-finite action is never passed on: it is replaced by the action box's centre (0 for the usual
   ``[-1, 1]`` box) and the step is flagged ``"nonfinite_action"``.
2. After the step, a non-finite observation or reward, or a ``guard_signals()`` value that is
   non-finite or outside the env's ``guard_limits``, flags the step with its reason.

A flagged step returns ``truncated=True`` with ``info["guard"] = reason`` (and ``info["guard_detail"]``,
a readable sentence), a finite observation and a reward of 0; the env underneath has already been
fully reset to the same task, so the next ``step`` starts clean. ``trips`` and ``trips_by_reason``
count flagged steps over the wrapper's life. Rollouts drop flagged steps (mask 0).

Envs opt in to the state checks with two members (plugin envs without them get the action,
observation and reward checks only)::

    guard_limits = {"joint_speed": (0.0, 40.0), "base_height": (0.05, 3.0)}
    def guard_signals(self) -> dict[str, float]: ...   # raw, unclipped current values
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium
import numpy as np

NONFINITE_ACTION, NONFINITE_OBS, NONFINITE_REWARD = "nonfinite_action", "nonfinite_obs", "nonfinite_reward"


class GuardWrapper(gymnasium.Wrapper):
    """Guard one env; see the module docstring. Public attributes of the wrapped env stay reachable.

    Usage::

        env = GuardWrapper(ReachEnv(RobotSpec(), horizon=50))
        obs, reward, terminated, truncated, info = env.step(action)
        if info.get("guard"):   # the env was reset to the same task; this step is not experience
            ...
    """

    def __init__(self, env: gymnasium.Env) -> None:
        super().__init__(env)
        self.trips = 0
        self.trips_by_reason: dict[str, int] = {}
        self._task: dict[str, Any] | None = None
        base = env.unwrapped
        self._signals = getattr(base, "guard_signals", None)
        self._limits: dict[str, tuple[float, float]] = dict(getattr(base, "guard_limits", None) or {})
        self._safe_action = _box_centre(env.action_space)

    def __getattr__(self, name: str) -> Any:
        # gymnasium 1.x wrappers no longer forward attributes; callers use env.set_task, env.obs_slices, ...
        if name.startswith("__") or name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)

    def set_task(self, params: dict[str, Any]) -> None:
        """Set the task on the wrapped env and remember it for guard resets."""
        self._task = params
        setter = getattr(self.env, "set_task", None)
        if setter is not None:
            setter(params)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Reset the wrapped env; ``options["task"]`` is remembered so a guard reset keeps the task."""
        if options and "task" in options:
            self._task = options["task"]
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any):
        """Step with the checks of the module docstring."""
        act = np.asarray(action, dtype=np.float64)
        if not np.isfinite(act).all():
            self.env.step(self._safe_action.copy())  # the step still happens, with a harmless action
            return self._trip(NONFINITE_ACTION, "action had non-finite entries; replaced by the box centre")
        obs, reward, terminated, truncated, info = self.env.step(action)
        reason = self._check(obs, reward)
        if reason is not None:
            return self._trip(*reason, info=info)
        return obs, reward, terminated, truncated, info

    def _check(self, obs: Any, reward: Any) -> tuple[str, str] | None:
        """Return (reason, detail) for the first failed check, else None."""
        if not np.isfinite(np.asarray(obs, dtype=np.float64)).all():
            return NONFINITE_OBS, "observation had non-finite entries"
        if not math.isfinite(float(reward)):
            return NONFINITE_REWARD, f"reward was {reward!r}"
        if self._signals is None:
            return None
        for name, value in self._signals().items():
            low, high = self._limits.get(name, (-math.inf, math.inf))
            if not math.isfinite(value) or not low <= value <= high:
                return name, f"{name}={value:.4g} outside [{low:g}, {high:g}]"
        return None

    def _trip(self, reason: str, detail: str, info: dict | None = None):
        """Count, reset the env to the same task, and return the flagged step."""
        self.trips += 1
        self.trips_by_reason[reason] = self.trips_by_reason.get(reason, 0) + 1
        options = None if self._task is None else {"task": self._task}
        obs, _ = self.env.reset(options=options)
        info = {**(info or {}), "guard": reason, "guard_detail": detail, "success": False}
        return obs, 0.0, False, True, info


def _box_centre(space: gymnasium.Space) -> np.ndarray:
    """A finite, in-bounds action: the box centre where bounded, else 0 clipped into the bounds."""
    if not isinstance(space, gymnasium.spaces.Box):
        raise TypeError(f"the guard needs a Box action space, got {type(space).__name__}")
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    centre = np.where(np.isfinite(low) & np.isfinite(high), (low + high) / 2, np.clip(0.0, low, high))
    return centre.astype(space.dtype)
