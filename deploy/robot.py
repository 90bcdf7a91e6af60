"""The `Robot` a deployed policy drives, and the `Step` it returns: the robot side's one abstraction.

A robot speaks in the units of the policy's manifest spaces (see docs/robots.md). This module imports
numpy only: concrete robots live elsewhere (:mod:`deploy.sim_robot` for the simulator,
:mod:`deploy.bridge_client` for robots behind the TCP bridge) and :func:`deploy.connect.connect_robot`
chooses among them.

Usage::

    robot = connect_robot("sim:kuka-0?horizon=50")       # deploy.connect; or "tcp://10.0.0.7:7000"
    obs = robot.reset(task={"goal": [0.6, 0.1, 0.4]}, seed=0)
    step = robot.act(np.zeros(3, np.float32))
    robot.close()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


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
        robot.hold()                          # keep the joints where they are
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

    def stop(self) -> None:
        """Halt motion now: command zero velocity (a controlled stop); the next ``act`` moves again."""
        ...

    def hold(self) -> None:
        """Keep the current joint positions (zero velocity command) until the next ``act``.

        The safe hold: the bridge server commands it whenever its client disconnects, misses the keepalive
        deadline or closes, so a robot never keeps executing a dead client's last command.
        """
        ...

    def close(self) -> None:
        """Release the robot (idempotent)."""
        ...
