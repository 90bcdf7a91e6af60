"""The `Robot` a deployed policy drives, a simulated one, and `connect_robot` to reach either kind.

A robot speaks in the units of the policy's manifest spaces (see docs/robots.md). Nothing here imports
pybullet, torch or Ray: `SimRobot` imports the fleet layer inside its constructor, and TCP robots live
in :mod:`deploy.bridge`.

Usage::

    robot = connect_robot("sim:kuka-0?horizon=50")       # or "tcp://10.0.0.7:7000" (token from env)
    obs = robot.reset(task={"goal": [0.6, 0.1, 0.4]}, seed=0)
    step = robot.act(np.zeros(3, np.float32))
    robot.close()
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlsplit

import numpy as np

if TYPE_CHECKING:
    from fleet.robots import RobotSpec

TOKEN_ENV = "METAFLEET_ROBOT_TOKEN"
ADDRESS_FORMS = "'sim:<robot-id>[?family=reach&horizon=50]' or 'tcp://HOST:PORT'"
SPEC_FLOAT_KEYS = ("link_mass_scale", "joint_damping", "motor_strength")


@dataclass
class Step:
    """What one control step returns."""

    observation: np.ndarray
    reward: float
    done: bool
    info: dict = field(default_factory=dict)


@runtime_checkable
class Robot(Protocol):
    """One robot under policy control: spaces in the manifest's units, one ``act`` per control step.

    Usage::

        obs = robot.reset(task=None, seed=0)
        while True:
            step = robot.act(action)          # action in [action_low, action_high]
            if step.done:
                break
        robot.close()
    """

    observation_shape: tuple[int, ...]
    action_low: np.ndarray
    action_high: np.ndarray

    def reset(self, task: dict | None = None, seed: int | None = None) -> np.ndarray:
        """Start an episode (``task``: the family's task params) and return the first observation."""
        ...

    def observe(self) -> np.ndarray:
        """The current observation, without acting."""
        ...

    def act(self, action: np.ndarray) -> Step:
        """Apply one control step's action and return what followed."""
        ...

    def close(self) -> None:
        """Release the robot (idempotent)."""
        ...


class SimRobot:
    """A simulated fleet robot: one fleet env behind the `Robot` protocol.

    Args:
        family: Task family name (``"reach"``).
        robot: The fleet member (a ``RobotSpec`` or its dict); default ``RobotSpec()``.
        horizon: Steps per episode; ``Step.done`` is True at the last one.
        task: Task params set now and kept until a ``reset(task=...)`` changes them.
        render: Keep a renderer so :meth:`frame` returns RGB frames (160x120, CPU TinyRenderer).
    """

    def __init__(self, family: str = "reach", robot: RobotSpec | dict | None = None, horizon: int = 50,
                 task: dict | None = None, render: bool = False):
        import fleet  # here, not at module level: the robot side must not need pybullet to import deploy

        spec = fleet.RobotSpec.from_dict(robot) if isinstance(robot, dict) else (robot or fleet.RobotSpec())
        self.robot_spec = spec
        self.family = family
        self._env = fleet.make_env(family, spec, horizon, render_mode="rgb_array" if render else None)
        try:
            if task is not None:
                self._env.set_task(task)
        except Exception:
            self._env.close()
            raise
        self.observation_shape = tuple(self._env.observation_space.shape)
        self.action_low = np.asarray(self._env.action_space.low, dtype=np.float32)
        self.action_high = np.asarray(self._env.action_space.high, dtype=np.float32)
        self._render = render
        self._obs: np.ndarray | None = None

    def reset(self, task: dict | None = None, seed: int | None = None) -> np.ndarray:
        options = {"task": task} if task is not None else None
        self._obs, _ = self._env.reset(seed=seed, options=options)
        return self._obs.copy()

    def observe(self) -> np.ndarray:
        if self._obs is None:
            raise RuntimeError("observe() before reset()")
        return self._obs.copy()

    def act(self, action: np.ndarray) -> Step:
        obs, reward, terminated, truncated, info = self._env.step(np.asarray(action, dtype=np.float32))
        self._obs = obs
        return Step(obs.copy(), float(reward), bool(terminated or truncated),
                    {**info, "terminated": bool(terminated), "truncated": bool(truncated)})

    def frame(self) -> np.ndarray | None:
        """The current RGB frame ``(H, W, 3)`` uint8 when built with ``render=True``, else None."""
        return self._env.render() if self._render else None

    def close(self) -> None:
        self._env.close()


def connect_robot(address: str, **kw: Any) -> Robot:
    """Open the robot at ``address``.

    - ``sim:<robot-id>[?key=value&...]`` -> :class:`SimRobot`; the id becomes ``RobotSpec.robot_id`` (model
      ``kuka_iiwa``); query keys: ``family``, ``horizon``, ``model``, ``link_mass_scale``, ``joint_damping``,
      ``motor_strength``. ``kw`` (family, horizon, task, render) are defaults the query overrides.
    - ``tcp://HOST:PORT`` -> :class:`deploy.bridge.RemoteRobot`; ``kw``: ``token`` (default: env
      ``METAFLEET_ROBOT_TOKEN``), ``timeout``.

    Raises ``ValueError`` for any other form, naming the expected ones.
    """
    if not isinstance(address, str):
        raise ValueError(f"robot address must be a string: {ADDRESS_FORMS}")
    if address.startswith("sim:"):
        return SimRobot(**{**kw, **_parse_sim(address)})
    if address.startswith("tcp://"):
        from deploy.bridge import RemoteRobot

        host, port = _parse_tcp(address)
        token = kw.pop("token", None) or os.environ.get(TOKEN_ENV, "")
        if not token:
            raise ValueError(f"robot {address!r} needs a token: set {TOKEN_ENV} or pass token=...")
        return RemoteRobot(host, port, token, **kw)
    raise ValueError(f"unknown robot address {address!r}; expected {ADDRESS_FORMS}")


def with_sim_defaults(address: str, **defaults: Any) -> str:
    """Add ``defaults`` (e.g. the policy's family and robot model) to a ``sim:`` address's query where the
    address does not set them; other addresses are returned unchanged.

    >>> with_sim_defaults("sim:c-1?horizon=20", family="velocity", model="half_cheetah")
    'sim:c-1?horizon=20&family=velocity&model=half_cheetah'
    """
    if not isinstance(address, str) or not address.startswith("sim:"):
        return address
    head, _, query = address.partition("?")
    present = {key for key, _ in parse_qsl(query, keep_blank_values=True)}
    extra = [f"{key}={value}" for key, value in defaults.items() if key not in present and value is not None]
    return head + ("?" + "&".join(filter(None, [query, *extra])) if query or extra else "")


def _parse_sim(address: str) -> dict[str, Any]:
    """``sim:kuka-3?horizon=20&motor_strength=0.8`` -> SimRobot keyword arguments."""
    robot_id, _, query = address[len("sim:"):].partition("?")
    if not robot_id:
        raise ValueError(f"robot address {address!r} names no robot id; expected {ADDRESS_FORMS}")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"robot address {address!r}: query must be key=value pairs joined by '&'") from None
    valid = ("family", "horizon", "model", *SPEC_FLOAT_KEYS)
    keys = [key for key, _ in pairs]
    unknown = sorted(set(keys) - set(valid))
    if unknown or len(set(keys)) != len(keys):
        raise ValueError(f"robot address {address!r}: unknown or repeated key(s) {unknown or keys}; "
                         f"valid: {', '.join(valid)}")
    options, spec = dict(pairs), {"robot_id": robot_id}
    out: dict[str, Any] = {}
    if "family" in options:
        out["family"] = options.pop("family")
    if "horizon" in options:
        out["horizon"] = _positive_int(address, "horizon", options.pop("horizon"))
    if "model" in options:
        spec["model"] = options.pop("model")
    for key, text in options.items():
        spec[key] = _finite_float(address, key, text)
    from fleet.robots import RobotSpec  # pure python; pybullet loads only with an env

    out["robot"] = RobotSpec.from_dict(spec)
    return out


def _positive_int(address: str, key: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"robot address {address!r}: {key} must be a positive integer, got {text!r}")
    return value


def _finite_float(address: str, key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"robot address {address!r}: {key} must be a finite number, got {text!r}")
    return value


def _parse_tcp(address: str) -> tuple[str, int]:
    try:
        parts = urlsplit(address)
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port is None or port == 0 or parts.path not in ("", "/") or parts.query:
        raise ValueError(f"robot address {address!r}: expected tcp://HOST:PORT with a port in 1..65535")
    return host, port


def read_token(token_file: str | None, required: bool = True) -> str:
    """The token from ``token_file`` (stripped) or ``$METAFLEET_ROBOT_TOKEN``; ValueError when required and empty."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read --token-file {token_file!r}: {exc}") from None
        if not token:
            raise ValueError(f"--token-file {token_file!r} is empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if required and not token:
        raise ValueError(f"a robot token is required: set {TOKEN_ENV} or pass --token-file FILE")
    return token
