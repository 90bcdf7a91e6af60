"""What the bridge server lets through to its robot: checked, paced and safety-filtered commands.

:func:`check_request` validates a request completely (strict types: a bool is not a number, nor a
version); :class:`RobotCommands` then executes it at most ``max_command_rate`` times a second, with every
action through the runtime's own :class:`deploy.safety.SafetyLayer` (clip, rate of change), so a client
cannot drive the robot harder than a local policy on the runtime could. :mod:`deploy.bridge_server` owns
the sockets; this module never sees one.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import numpy as np

from deploy.robot import Robot
from deploy.safety import SafetyConfig, SafetyLayer
from deploy.wire import MAX_SEED, PROTOCOL_VERSION, encode_array, is_finite_number, json_safe

# op -> the fields it may carry besides "op" and "v"
OPS: dict[str, frozenset[str]] = {
    "reset": frozenset({"task", "seed"}), "observe": frozenset(), "act": frozenset({"action"}),
    "hold": frozenset(), "stop": frozenset(), "close": frozenset(), "keepalive": frozenset(),
}
PACED_OPS = ("reset", "observe", "act")  # hold and stop are never delayed: they are the safe way out


class RequestError(ValueError):
    """A well-framed request with invalid content: answered with an error, the session stays."""


@dataclass(frozen=True)
class Request:
    """A validated request: ``op`` and its checked arguments."""

    op: str
    task: dict | None = None
    seed: int | None = None
    action: np.ndarray | None = None


def check_request(request: dict, action_dim: int) -> Request:
    """Validate ``request`` completely; :class:`RequestError` naming the first problem."""
    if "v" in request and not _is_version(request["v"]):
        raise RequestError(f"unsupported protocol version {_show(request['v'], 20)}; expected {PROTOCOL_VERSION}")
    op = request.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise RequestError(f"unknown op {_show(op, 40)}; expected one of {sorted(OPS)}")
    unknown = sorted(set(request) - OPS[op] - {"op", "v"})
    if unknown:
        raise RequestError(f"unknown field(s) {_show(unknown, 80)} for op {op!r}")
    if op == "reset":
        return Request(op, task=_check_task(request.get("task")), seed=_check_seed(request.get("seed")))
    if op == "act":
        return Request(op, action=_check_action(request.get("action"), action_dim))
    return Request(op)


def _is_version(value) -> bool:
    return type(value) is int and value == PROTOCOL_VERSION  # True == 1 and 2.0 == 2 are not versions


def _check_task(task) -> dict | None:
    if task is not None and not isinstance(task, dict):
        raise RequestError(f"task must be a JSON object or null, got {type(task).__name__}")
    return task


def _check_seed(seed) -> int | None:
    if seed is not None and (type(seed) is not int or not 0 <= seed <= MAX_SEED):
        raise RequestError(f"seed must be an integer in [0, 2**63-1] or null, got {_show(seed, 40)}")
    return seed


def _check_action(action, dim: int) -> np.ndarray:
    if not isinstance(action, list) or len(action) != dim:
        raise RequestError(f"action must be a list of {dim} numbers, got {_show(action, 80)}")
    if not all(is_finite_number(a) for a in action):
        raise RequestError(f"action entries must be finite numbers, got {_show(action, 80)}")
    return np.asarray(action, dtype=np.float64)


def _show(value, limit: int) -> str:
    return json.dumps(value)[:limit]


class Pacer:
    """At most ``rate`` commands a second: each waits until ``1 / rate`` s after the previous one started."""

    def __init__(self, rate: float | None):
        if rate is not None and not (is_finite_number(rate) and rate > 0):
            raise ValueError(f"max_command_rate must be a finite number > 0 or None, got {rate!r}")
        self.interval = 0.0 if rate is None else 1.0 / float(rate)
        self._next = 0.0

    def wait(self) -> bool:
        """Sleep until this command's slot; True when it had to wait."""
        delay = self._next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        # From when this command really starts, not its slot: a late one never lets the next catch up.
        self._next = time.monotonic() + self.interval
        return delay > 0


class RobotCommands:
    """Executes validated requests on ``robot``: paced, actions through the runtime's safety layer.

    One session at a time calls :meth:`execute` (the server's session lock); :meth:`hold` may come from
    the server's own threads and is serialised with it.
    """

    def __init__(self, robot: Robot, safety: SafetyConfig | None, max_command_rate: float | None):
        if not callable(getattr(robot, "hold", None)):
            raise TypeError(f"{type(robot).__name__} has no hold(): the bridge must be able to hold the robot "
                            "when its client goes away (see the Robot protocol in deploy/robot.py)")
        self.robot = robot
        self.observation_shape = tuple(int(n) for n in robot.observation_shape)
        self.action_low = np.asarray(robot.action_low, dtype=np.float64).ravel()
        self.action_high = np.asarray(robot.action_high, dtype=np.float64).ravel()
        self.safety = SafetyLayer(self.observation_shape, self.action_low, self.action_high,
                                  safety if safety is not None else SafetyConfig())
        self.pacer = Pacer(max_command_rate)
        self.paced = 0
        self._lock = threading.Lock()
        self._last_obs: np.ndarray | None = None

    @property
    def action_dim(self) -> int:
        return self.action_low.size

    def execute(self, request: Request) -> dict:
        """The reply to ``request`` (``close`` and ``keepalive`` are the server's, not the robot's)."""
        with self._lock:
            if request.op in PACED_OPS and self.pacer.wait():
                self.paced += 1
            if request.op == "reset":
                self.safety.reset()
                self._last_obs = np.asarray(self.robot.reset(task=request.task, seed=request.seed))
                return {"ok": True, "observation": encode_array(self._last_obs)}
            if request.op == "observe":
                return {"ok": True, "observation": encode_array(self.robot.observe())}
            if request.op in ("hold", "stop"):
                getattr(self.robot, request.op)()
                self.safety.reset()  # motion ramps up again from the hold
                return {"ok": True}
            return self._act(request.action)

    def hold(self) -> None:
        """Bring the robot to a safe hold (the session ended or missed its deadline)."""
        with self._lock:
            self.robot.hold()
            self.safety.reset()

    def _act(self, proposed: np.ndarray) -> dict:
        obs = self._last_obs if self._last_obs is not None else np.zeros(self.observation_shape, np.float32)
        action, checks = self.safety.filter(obs, proposed)
        step = self.robot.act(action)
        self._last_obs = np.asarray(step.observation)
        info = json_safe(step.info) if isinstance(step.info, dict) else {}
        # The reply says what the server changed, so a client can tell its actions were not sent as proposed.
        for key in ("clipped", "rate_limited"):
            if checks.get(key):
                info[f"{key}_by_server"] = int(checks[key])
        if checks.get("safe_stop"):
            info["safe_stop_by_server"] = str(checks.get("reason"))
        return {"ok": True, "observation": encode_array(step.observation), "reward": json_safe(float(step.reward)),
                "done": bool(step.done), "info": info}
