"""metafleet's fleet layer: robots, task families (gymnasium envs on pybullet) and task distributions.

It imports nothing else of ours, and no Ray/torch/MLflow; pybullet loads only when an env is made.

Usage::

    import fleet
    dist = fleet.TaskDistribution("reach", num_train=100, num_test=20, seed=0)
    env = fleet.make_env("reach", fleet.RobotSpec(robot_id="kuka-1"), horizon=50)
    obs, info = env.reset(seed=0, options={"task": dist.sample(1)[0].params})

The reach env is also registered with gymnasium as ``metafleet/Reach-v0``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gymnasium

from fleet.errors import UnknownNameError
from fleet.robots import ROBOT_MODELS, RobotModel, RobotSpec, get_robot_model
from fleet.tasks import FAMILIES, Task, TaskDistribution, TaskFamily, get_family

if TYPE_CHECKING:
    import gymnasium as gym

__all__ = [
    "FAMILIES",
    "ROBOT_MODELS",
    "RobotModel",
    "RobotSpec",
    "Task",
    "TaskDistribution",
    "TaskFamily",
    "UnknownNameError",
    "get_family",
    "get_robot_model",
    "make_env",
    "robot_label",
]

REACH_ENV_ID = "metafleet/Reach-v0"

# Guarded so re-imports (reloads, Ray workers importing twice) do not trip gymnasium's re-register warning.
# No max_episode_steps: the env truncates at its own horizon, so a TimeLimit wrapper would only disagree.
if REACH_ENV_ID not in gymnasium.registry:
    gymnasium.register(id=REACH_ENV_ID, entry_point="fleet.envs.reach:ReachEnv")
if "metafleet/Push-v0" not in gymnasium.registry:
    gymnasium.register(id="metafleet/Push-v0", entry_point="fleet.envs.push:PushEnv")
# Locomotion: one env class, the task family as a kwarg (default robot: the half-cheetah).
for _task in ("velocity", "direction", "dynamics"):
    if f"metafleet/{_task.capitalize()}-v0" not in gymnasium.registry:
        gymnasium.register(id=f"metafleet/{_task.capitalize()}-v0", entry_point="fleet.envs.locomotion:LocomotionEnv",
                           kwargs={"task": _task})
del _task


def make_env(family: str, robot: RobotSpec, horizon: int, render_mode: str | None = None) -> gym.Env:
    """Build ``family``'s env for ``robot`` with episodes of ``horizon`` steps (then ``set_task``).

    ``family`` is a built-in name or a plugin's ``"module:object"``. Every env comes wrapped in
    :class:`fleet.envs.guard.GuardWrapper` (non-finite actions never reach the simulator; a non-finite or
    exploding state ends the step with ``info["guard"]`` and resets the env to the same task).
    """
    from fleet.envs.guard import GuardWrapper

    return GuardWrapper(get_family(family).make_env(robot, horizon, render_mode=render_mode))


def robot_label(family: str, robot: RobotSpec) -> str:
    """What a run, registry tag or manifest should call ``robot`` for ``family``: the robot's model, or
    ``"none (plugin env)"`` for a plugin family whose envs take no robot (nothing of the robot is simulated)."""
    return getattr(get_family(family), "robot_label", None) or robot.model
