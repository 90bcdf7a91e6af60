"""Experience containers: fixed-horizon episode blocks for one task, stamped with provenance."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fleet.robots import RobotSpec
from fleet.tasks import Task

PHASES = ("support", "query", "eval", "train")


@dataclass(frozen=True)
class SampleRequest:
    """Ask a worker for `episodes` episodes of `task` on `robot` with policy `policy_version`.

    The seed fixes env resets and action noise, so the result does not depend on which worker
    (local or Ray) serves the request.
    """

    task: Task
    robot: RobotSpec
    policy_version: str
    episodes: int
    horizon: int
    seed: int
    phase: str = "support"
    deterministic: bool = False
    context: tuple[float, ...] = ()  # task vector for task-conditioned policies (empty = none)
    trial_episodes: int = 1  # consecutive episodes sharing a recurrent state (RL^2 trials)

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.horizon < 1:
            raise ValueError(f"episodes and horizon must be >= 1, got {self.episodes}, {self.horizon}")
        if self.trial_episodes < 1 or self.episodes % self.trial_episodes:
            raise ValueError(f"episodes ({self.episodes}) must be a multiple of trial_episodes "
                             f"({self.trial_episodes})")
        if self.phase not in PHASES:
            raise ValueError(f"unknown phase {self.phase!r}; expected one of {PHASES}")


@dataclass
class Batch:
    """`episodes` x `horizon` transitions of one task. Padded steps have mask 0.

    Arrays: obs [E, H, obs_dim], actions [E, H, act_dim], logp [E, H] (behaviour policy),
    rewards [E, H], mask [E, H], success [E] (`info["success"]` at the episode's last step, or at any
    step when the task family says `success_at = "any"`),
    context [C] (the task vector the policy saw; empty when unconditioned), final_obs [E, obs_dim] (the
    observation after each episode's last real step: the next observation of that step, for off-policy
    learners; episodes end by truncation, so learners bootstrap from it). With trials
    (RL^2), episodes are trial-major: trial 0's episodes 0..n-1, then trial 1's, ...
    A step the env's guard flagged (non-finite or exploding state) has mask 0: learners drop it.
    """

    obs: np.ndarray
    actions: np.ndarray
    logp: np.ndarray
    rewards: np.ndarray
    mask: np.ndarray
    success: np.ndarray
    task: Task
    robot: RobotSpec
    policy_version: str
    phase: str
    worker_id: int = -1
    seq: int = -1
    stats: dict = field(default_factory=dict)
    context: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    trial_episodes: int = 1
    final_obs: np.ndarray | None = None  # [E, obs_dim]; None only in batches built by hand

    @property
    def num_episodes(self) -> int:
        return int(self.obs.shape[0])

    @property
    def num_steps(self) -> int:
        """Real environment steps in this batch (padding excluded)."""
        return int(self.mask.sum())

    def episode_returns(self) -> np.ndarray:
        return (self.rewards * self.mask).sum(axis=1)

    def mean_return(self) -> float:
        return float(self.episode_returns().mean())

    def success_rate(self) -> float:
        return float(self.success.mean())
