"""PEARL's data on the learner: per-task replay buffers (all recent transitions of a task, for SAC) and
per-task context buffers (the task's latest prior-z transitions, for the encoder), as in Rakelly et al.
2019 (the "encoder buffer" holds only recent data collected with z from the prior)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from workers.batch import Batch

FIELDS = ("obs", "actions", "rewards", "next_obs")


def batch_transitions(batch: Batch) -> dict[str, np.ndarray]:
    """The real steps of a batch as flat transitions (obs, actions, rewards, next_obs) [N, ...].

    The next observation of step t is obs[t + 1] while the episode goes on, else the batch's
    `final_obs` (the observation after the episode's last step). Steps the env guard masked are dropped.
    """
    if batch.final_obs is None:
        raise ValueError(f"batch of task {batch.task.task_id!r} has no final_obs: PEARL needs the observation "
                         "after each episode's last step (workers.rollout records it)")
    mask = batch.mask > 0
    following = np.concatenate([mask[:, 1:], np.zeros_like(mask[:, :1])], axis=1)
    next_obs = np.concatenate([batch.obs[:, 1:], batch.final_obs[:, None]], axis=1)
    next_obs = np.where(following[..., None], next_obs, batch.final_obs[:, None])
    return {"obs": batch.obs[mask], "actions": batch.actions[mask], "rewards": batch.rewards[mask],
            "next_obs": next_obs[mask]}


def concat_transitions(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in FIELDS}


class TaskBuffer:
    """A ring buffer of one task's transitions (capacity `size`; the oldest are overwritten)."""

    def __init__(self, obs_dim: int, act_dim: int, size: int):
        self.size, self.count, self.head = size, 0, 0
        self.data = {"obs": np.zeros((size, obs_dim), np.float32), "actions": np.zeros((size, act_dim), np.float32),
                     "rewards": np.zeros(size, np.float32), "next_obs": np.zeros((size, obs_dim), np.float32)}

    def add(self, transitions: dict[str, np.ndarray]) -> None:
        n = min(len(transitions["rewards"]), self.size)  # more than fits: keep the newest
        idx = (self.head + np.arange(n)) % self.size
        for key in FIELDS:
            self.data[key][idx] = transitions[key][len(transitions[key]) - n:]
        self.head, self.count = int((self.head + n) % self.size), min(self.size, self.count + n)

    def clear(self) -> None:
        self.count = self.head = 0

    def sample(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """`n` transitions drawn uniformly with replacement."""
        idx = rng.integers(0, self.count, n)
        return {k: v[idx] for k, v in self.data.items()}

    def all(self) -> dict[str, np.ndarray]:
        return {k: v[: self.count] for k, v in self.data.items()}

    def state_dict(self) -> dict:
        live = self.all()
        return {"size": self.size, "head": self.head, "count": self.count,
                **{k: torch.from_numpy(v.copy()) for k, v in (live if self.count < self.size else self.data).items()}}

    def load_state_dict(self, state: dict) -> None:
        self.size, self.head, self.count = int(state["size"]), int(state["head"]), int(state["count"])
        for key in FIELDS:
            self.data[key][: len(state[key])] = state[key].numpy()


class TaskBuffers:
    """One `TaskBuffer` per task id, created on first use."""

    def __init__(self, obs_dim: int, act_dim: int, size: int):
        self.obs_dim, self.act_dim, self.size = obs_dim, act_dim, size
        self.buffers: dict[str, TaskBuffer] = {}

    def __getitem__(self, task_id: str) -> TaskBuffer:
        if task_id not in self.buffers:
            self.buffers[task_id] = TaskBuffer(self.obs_dim, self.act_dim, self.size)
        return self.buffers[task_id]

    def ready(self) -> list[str]:
        """Task ids holding data, in insertion order."""
        return [k for k, b in self.buffers.items() if b.count > 0]

    def sample(self, task_ids: Sequence[str], rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """[T, n, ...] transitions: `n` from each task's buffer."""
        parts = [self[t].sample(rng, n) for t in task_ids]
        return {k: np.stack([p[k] for p in parts]) for k in FIELDS}

    def state_dict(self) -> dict:
        return {task_id: b.state_dict() for task_id, b in self.buffers.items()}

    def load_state_dict(self, state: dict) -> None:
        self.buffers.clear()
        for task_id, data in state.items():
            self[task_id].load_state_dict(data)
