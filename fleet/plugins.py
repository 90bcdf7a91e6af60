"""External task families named ``"module:object"`` in a config, adapted to the internal TaskFamily.

The protocol a user implements (nothing of ours to import or subclass)::

    class MyFamily:                       # an object, or a class with a no-argument constructor
        name = "my-nav"                   # required: a short name for humans
        def sample_params(self, rng: numpy.random.Generator) -> dict: ...       # required
        def make_env(self, horizon: int) -> gymnasium.Env: ...                  # required
        # or robot-aware: def make_env(self, robot, horizon) -> gymnasium.Env  (robot: fleet.RobotSpec)
        # either may also take render_mode=None: it then gets "rgb_array" when frames are wanted
        # optional: description: str, param_names: tuple[str, ...], robot_kinds: tuple[str, ...],
        #           too_close(a: dict, b: dict) -> bool,
        #           success_at: "last" (default) or "any",
        #           train_tasks() -> list[dict], test_tasks() -> list[dict]

The env applies a task either in ``set_task(params)`` or in ``reset(options={"task": params})``; its
observation and action spaces are ``gymnasium.spaces.Box`` (any shape: they are flattened here).
``info["success"]`` is optional; an episode succeeds if it holds at the episode's last step
(``success_at = "last"``, as for the built-in families) or at any step (``success_at = "any"``). Actions
are clipped into the action box before the env sees them.

``train_tasks()`` / ``test_tasks()`` (each optional) return fixed lists of params that replace the drawn
split: no draws, never more tasks than the list holds (a config's ``num_train_tasks`` / ``num_test_tasks``
keep the first that many), and meta-batches are sampled from the list. A fixed test task equal to a train
task is an error. A family whose ``make_env`` takes no ``robot`` has none: runs say ``robot_label`` ("none
(plugin env)") where a robot model would stand.

Any exception a plugin env raises in ``make_env``, ``reset`` or ``step`` reaches the caller as
``workers.worker.EnvFailure`` (a ``ValueError``) naming the family, the task and the cause.

:func:`load_plugin` imports and checks the object and returns a :class:`PluginFamily`, whose ``name``
is the ``"module:object"`` reference itself: tasks carry it, so every process (a Ray actor too) can
rebuild the family from the task alone, provided the module is importable there.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from typing import Any

import gymnasium
import numpy as np


class PluginError(ValueError):
    """A plugin reference that cannot be used; the message names the reference and what is wrong."""


NO_ROBOT = "none (plugin env)"
SUCCESS_RULES = ("last", "any")


def is_reference(name: str) -> bool:
    """True for ``"module:object"`` references (built-in family names hold no colon)."""
    return isinstance(name, str) and ":" in name


def resolve_object(reference: str, what: str = "task family") -> Any:
    """Import ``"module:object"`` (dotted attributes allowed) and return the object.

    The working directory is put on ``sys.path`` first (as ``python -m`` would), so a module next to
    the config imports the same way from the ``fleet`` command, Ray actors and tests.
    """
    module_name, _, attr = reference.partition(":")
    if not module_name or not attr:
        raise PluginError(f"{what} {reference!r}: expected 'module:object', e.g. 'my_pkg.tasks:MyFamily'")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or anything the module raises while importing
        raise PluginError(f"{what} {reference!r}: cannot import module {module_name!r}: "
                          f"{type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PluginError(f"{what} {reference!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def load_plugin(reference: str) -> PluginFamily:
    """Resolve, instantiate (if a class) and check a plugin family; raise :class:`PluginError`."""
    obj = resolve_object(reference)
    if inspect.isclass(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise PluginError(f"task family {reference!r}: the class must be constructible without "
                              f"arguments: {type(exc).__name__}: {exc}") from None
    missing = [attr for attr in ("name", "sample_params", "make_env") if not hasattr(obj, attr)]
    if missing:
        raise PluginError(f"task family {reference!r}: missing required attribute(s) {missing}; a family needs "
                          "name, sample_params(rng) -> dict and make_env(horizon) -> gymnasium.Env")
    for attr in ("sample_params", "make_env"):
        if not callable(getattr(obj, attr)):
            raise PluginError(f"task family {reference!r}: {attr} must be callable")
    return PluginFamily(reference, obj)


class PluginFamily:
    """The internal TaskFamily for a user's object: names, checked params, guarded-able envs."""

    def __init__(self, reference: str, plugin: Any) -> None:
        self.name = reference
        self.plugin = plugin
        self.display_name = str(plugin.name)
        doc = (inspect.getdoc(plugin) or "").strip().splitlines()
        self.description = str(getattr(plugin, "description", None) or (doc[0] if doc else self.display_name))
        kinds = getattr(plugin, "robot_kinds", None)
        self.robot_kinds: tuple[str, ...] | None = tuple(kinds) if kinds is not None else None
        names = getattr(plugin, "param_names", None)
        self.param_names = tuple(names) if names is not None else tuple(self.sample_params(np.random.default_rng(0)))
        if hasattr(plugin, "too_close"):
            self.too_close = plugin.too_close
        params = inspect.signature(plugin.make_env).parameters
        self._robot_aware = "robot" in params
        self._takes_render = "render_mode" in params
        self.robot_label: str | None = None if self._robot_aware else NO_ROBOT  # None: the robot's model
        self.success_at = getattr(plugin, "success_at", "last")
        if self.success_at not in SUCCESS_RULES:
            raise PluginError(f"task family {reference!r}: success_at must be one of {SUCCESS_RULES}, "
                              f"got {self.success_at!r}")
        self._fixed: dict[str, list[dict[str, Any]] | None] = {}
        for split in ("train", "test"):  # train first: test tasks are checked against it
            self._fixed[split] = self._task_list(split)

    def _task_list(self, split: str) -> list[dict[str, Any]] | None:
        """The plugin's ``train_tasks()`` / ``test_tasks()`` list, checked (None when it defines none)."""
        method = getattr(self.plugin, f"{split}_tasks", None)
        if method is None:
            return None
        tasks = method() if callable(method) else None
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks) or not tasks:
            raise PluginError(f"task family {self.name!r}: {split}_tasks() must return a non-empty list of "
                              f"param dicts, got {tasks!r}"[:300])
        tasks = [self._plain(t, f"{split}_tasks()") for t in tasks]
        if split == "test" and self._fixed.get("train"):
            shared = [t for t in tasks if t in self._fixed["train"]]
            if shared:
                raise PluginError(f"task family {self.name!r}: test task {shared[0]} is also a train task")
        return tasks

    def fixed_tasks(self, split: str) -> list[dict[str, Any]] | None:
        """The fixed param list of ``split`` (``"train"`` or ``"test"``), or None: draw the split."""
        return self._fixed[split]

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        """The plugin's params, checked to be a JSON-able dict (tasks are logged and shipped as JSON)."""
        return self._plain(self.plugin.sample_params(rng), "sample_params")

    def _plain(self, params: Any, source: str) -> dict[str, Any]:
        if not isinstance(params, dict):
            raise PluginError(f"task family {self.name!r}: {source} must return a dict, got {type(params).__name__}")
        try:
            return json.loads(json.dumps(params))
        except (TypeError, ValueError) as exc:
            raise PluginError(f"task family {self.name!r}: {source} must return JSON-able plain python "
                              f"(use float(x) and list(array)): {exc}") from None

    def make_env(self, robot: Any, horizon: int, render_mode: str | None = None) -> gymnasium.Env:
        """Build the user's env and adapt it (flat float32 Box spaces, tasks via reset options)."""
        kwargs: dict[str, Any] = {"horizon": horizon}
        if self._robot_aware:
            kwargs["robot"] = robot
        if self._takes_render and render_mode is not None:
            kwargs["render_mode"] = render_mode
        env = self.plugin.make_env(**kwargs)
        if not isinstance(env, gymnasium.Env):
            raise PluginError(f"task family {self.name!r}: make_env must return a gymnasium.Env, "
                              f"got {type(env).__name__}")
        return PluginEnv(env, self.name)


def _flat_box(space: Any, which: str, family: str) -> gymnasium.spaces.Box:
    if not isinstance(space, gymnasium.spaces.Box):
        raise PluginError(f"task family {family!r}: the env's {which} space must be a gymnasium.spaces.Box, "
                          f"got {type(space).__name__}")
    return gymnasium.spaces.Box(space.low.reshape(-1).astype(np.float32), space.high.reshape(-1).astype(np.float32),
                                dtype=np.float32)


class PluginEnv(gymnasium.Wrapper):
    """Presents a plugin env the way workers use envs: flat float32 Box spaces, ``set_task``, and
    ``reset(options={"task": params})`` whichever of the two the env itself implements."""

    def __init__(self, env: gymnasium.Env, family: str) -> None:
        super().__init__(env)
        self._inner_action = env.action_space
        self.observation_space = _flat_box(env.observation_space, "observation", family)
        self.action_space = _flat_box(env.action_space, "action", family)
        self._has_set_task = callable(getattr(env, "set_task", None))

    def set_task(self, params: dict[str, Any]) -> None:
        """Apply ``params`` now (env with ``set_task``) or at the next reset (env taking reset options)."""
        if self._has_set_task:
            self.env.set_task(params)
        else:
            self._pending = params

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Reset; a task in ``options`` goes through ``set_task`` when the env has it."""
        options = dict(options or {})
        if "task" not in options and getattr(self, "_pending", None) is not None:
            options["task"] = self._pending
        if self._has_set_task and "task" in options:
            self.env.set_task(options.pop("task"))
        obs, info = self.env.reset(seed=seed, options=options or None)
        return np.asarray(obs, dtype=np.float32).reshape(-1), info

    def step(self, action: Any):
        """Clip into the env's action box (finite bounds), reshape, step, flatten the observation."""
        space = self._inner_action
        act = np.asarray(action, dtype=space.dtype).reshape(space.shape)
        act = np.clip(act, space.low, space.high)
        obs, reward, terminated, truncated, info = self.env.step(act)
        return np.asarray(obs, dtype=np.float32).reshape(-1), float(reward), bool(terminated), bool(truncated), info
