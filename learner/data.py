"""Data preparation shared by the on-policy learners, as plain functions: batches -> stacked tensors with
GAE advantages, per-task weights and task vectors.

`prepare_episodes` stacks independent episodes [N, E, H, ...]; `prepare_trials` stacks RL^2 trials
[N, trials, n * H, ...] so that returns and GAE run across the episodes of a trial. Both share the
advantage computation and weights below.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from learner.adaptation import TaskData
from learner.config import LearnerConfig
from learner.losses import discounted_returns, gae, linear_baseline_values, normalize_advantages
from workers.batch import Batch

KEYS = ("obs", "actions", "logp", "rewards", "mask")


def advantages(t: dict[str, torch.Tensor], config: LearnerConfig) -> torch.Tensor:
    """GAE over a per-task linear baseline, normalised per task (`per_task`) or over the batch (`global`)."""
    returns = discounted_returns(t["rewards"], t["mask"], config.gamma)
    values = torch.stack([linear_baseline_values(o, r, m) for o, r, m in zip(t["obs"], returns, t["mask"])])
    adv = gae(t["rewards"], values, t["mask"], config.gamma, config.gae_lambda)
    if config.normalization == "global":
        return normalize_advantages(adv, t["mask"])
    return torch.stack([normalize_advantages(a, m) for a, m in zip(adv, t["mask"])])


def task_weights(batches: Sequence[Batch], config: LearnerConfig, device: torch.device) -> torch.Tensor:
    """[N]: `task_weights` by task id, else by family, else 1."""
    weights = [config.task_weights.get(b.task.task_id, config.task_weights.get(b.task.family, 1.0)) for b in batches]
    return torch.tensor(weights, dtype=torch.float32, device=device)


def _tensors(stacked: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v, dtype=torch.float32, device=device) for k, v in stacked.items()}


def prepare_episodes(batches: Sequence[Batch], config: LearnerConfig, device: torch.device) -> TaskData:
    """Stack batches into [N, E, H, ...] tensors with GAE advantages, "task_weight" [N] and, when the
    batches carry task vectors, "context" [N, C]."""
    t = _tensors({key: np.stack([getattr(b, key) for b in batches]) for key in KEYS}, device)
    data = {"obs": t["obs"], "actions": t["actions"], "logp_old": t["logp"], "adv": advantages(t, config),
            "mask": t["mask"], "task_weight": task_weights(batches, config, device)}
    contexts = [np.asarray(b.context, np.float32).reshape(-1) for b in batches]
    lengths = sorted({len(c) for c in contexts})
    if lengths != [0]:
        if len(lengths) != 1:
            raise ValueError(f"batches carry task vectors of different lengths {lengths}; expected one length")
        data["context"] = torch.as_tensor(np.stack(contexts), device=device)
    return data


def prepare_trials(batches: Sequence[Batch], config: LearnerConfig, device: torch.device, n: int) -> TaskData:
    """Stack batches as trials [N, trials, T = n * H, ...] (plus "rewards" and "horizon" [N], which the
    recurrent policy replays); returns and GAE run across episode boundaries within a trial."""
    for b in batches:
        if b.trial_episodes != n or b.num_episodes % n:
            raise ValueError(f"rl2 needs batches of whole trials of {n} episodes, got {b.num_episodes} "
                             f"episodes with trial_episodes={b.trial_episodes} (task {b.task.task_id})")
    horizon = batches[0].obs.shape[1]
    t = _tensors({key: np.stack([as_trials(getattr(b, key), n) for b in batches]) for key in KEYS}, device)
    return {"obs": t["obs"], "actions": t["actions"], "rewards": t["rewards"], "logp_old": t["logp"],
            "adv": advantages(t, config), "mask": t["mask"],
            "horizon": torch.full((len(batches),), horizon, device=device),
            "task_weight": task_weights(batches, config, device)}


def as_trials(array: np.ndarray, n: int) -> np.ndarray:
    """[trials * n, H, ...] (trial-major) -> [trials, n * H, ...]: each trial one long sequence."""
    return array.reshape(array.shape[0] // n, n * array.shape[1], *array.shape[2:])
