"""Locomotion task families for legged robots: ``velocity``, ``direction``, ``dynamics`` and ``robot_run``.

A family is its task (params, validation, reward: :mod:`fleet.envs.locomotion_tasks`) plus its env factory,
which builds a :class:`fleet.envs.locomotion.LocomotionEnv`. The env is imported inside ``make_env`` so that
building task distributions (on the learner, in the CLI) loads no pybullet; the env module imports the tasks,
never this module.

Speeds are robot-agnostic in the params and scaled by the robot kind's :data:`~fleet.envs.locomotion_tasks.GAITS`
entry, because ``sample_params`` does not know the robot: ``{"speed": 0.5}`` asks the half-cheetah for 1 m/s
(MAML's 0..2 m/s range) and the A1 quadruped for 0.25 m/s (its scripted trot reaches ~0.45 m/s).

Usage::

    family = VelocityFamily()
    env = family.make_env(RobotSpec(robot_id="cheetah-0", model="half_cheetah"), horizon=100)
    obs, info = env.reset(seed=0, options={"task": family.sample_params(np.random.default_rng(0))})
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleet.envs.locomotion_tasks import DirectionTask, DynamicsTask, RobotRunTask, VelocityTask
from fleet.robots import get_robot_model

if TYPE_CHECKING:
    import gymnasium

    from fleet.robots import RobotSpec


class _LocomotionEnvFactory:
    """The env factory the locomotion families share (mixed into each family ahead of its task)."""

    name: str
    robot_kinds: tuple[str, ...]

    def make_env(self, robot: RobotSpec, horizon: int, render_mode: str | None = None) -> gymnasium.Env:
        """Build a :class:`fleet.envs.locomotion.LocomotionEnv` for ``robot``; call ``set_task`` before use."""
        kind = get_robot_model(robot.model).kind
        if kind not in self.robot_kinds:
            raise ValueError(f"task family {self.name!r} cannot run on robot {robot.robot_id!r} (model "
                             f"{robot.model!r}, kind {kind!r}); supported kinds: {', '.join(self.robot_kinds)}")
        from fleet.envs.locomotion import LocomotionEnv  # deferred: pybullet only where envs are stepped

        return LocomotionEnv(robot=robot, horizon=horizon, render_mode=render_mode, task=self.name)


class VelocityFamily(_LocomotionEnvFactory, VelocityTask):
    """Run forward at a hidden target speed (MAML's half-cheetah velocity task); see :class:`VelocityTask`."""


class DirectionFamily(_LocomotionEnvFactory, DirectionTask):
    """Run forward or backward, the direction hidden (MAML's cheetah task); see :class:`DirectionTask`."""


class DynamicsFamily(_LocomotionEnvFactory, DynamicsTask):
    """Walk forward at a fixed speed on a hidden body; see :class:`DynamicsTask`."""


class RobotRunFamily(_LocomotionEnvFactory, RobotRunTask):
    """Run forward at a fixed speed where only the robot varies (a robot-adaptation exam); see :class:`RobotRunTask`."""
