"""The MetaLearner interface and what gradient-based learners share: data preparation
(baseline + GAE + per-task advantage normalisation), batched adaptation, weights, state.

The calling loop (see learner/trainer.py):

    weights = learner.policy_weights(version)                 # theta -> workers
    support = pool.sample(support_requests, {version: weights})
    adapted = learner.adapt(support, version)                 # one PolicyWeights per task
    query = pool.sample(query_requests, {w.version: w for w in adapted})
    metrics = learner.update(support, query)
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np
import torch

from fleet.tasks import Task
from learner.adaptation import Params, TaskData, adapt_batched, log_prob, unstack
from learner.config import LearnerConfig
from learner.losses import (
    discounted_returns,
    gae,
    linear_baseline_values,
    masked_mean,
    normalize_advantages,
    ppo_clip_loss,
)
from learner.networks import GaussianMLPPolicy, RunningNormalizer, gaussian_entropy
from learner.pcgrad import pcgrad_backward
from policy import PolicySpec, PolicyWeights
from workers.batch import Batch


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("learner.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


class MetaLearner(abc.ABC):
    """Holds theta, adapts it per task, and updates it from support/query batches."""

    algorithm: str = "base"
    trial_episodes: int = 1  # episodes that share a recurrent state (RL^2 trials); 1 = independent episodes

    def __init__(self, spec: PolicySpec, config: LearnerConfig, train_tasks: Sequence[Task] = ()):
        self.config = config
        self.train_tasks = tuple(train_tasks)  # what one-hot task ids and per-task heads index
        self.device = resolve_device(config.device)
        self.policy = GaussianMLPPolicy(spec, config.init_std).to(self.device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.outer_lr)
        self.normalizer = RunningNormalizer(spec.obs_dim)

    # ---- the interface -------------------------------------------------------------------
    @abc.abstractmethod
    def adapt_for_training(self, support: Sequence[Batch], version: str) -> list[PolicyWeights]:
        """Per-task policies to collect query episodes with during meta-training."""

    @abc.abstractmethod
    def update(self, support: Sequence[Batch], query: Sequence[Batch]) -> dict[str, float]:
        """One meta-update of theta; returns scalar metrics."""

    def weights_for(self, tasks: Sequence[Task], version: str) -> list[PolicyWeights]:
        """The policy each task's support episodes are collected with: theta for all, by default
        (a learner with one network per task returns that task's own)."""
        return [self.policy_weights(version)] * len(tasks)

    def task_minibatches(self, num_tasks: int) -> list[torch.Tensor]:
        """Task indices of each PPO minibatch for one epoch, shuffled with torch's RNG (checkpointed)."""
        order = torch.randperm(num_tasks) if self.config.minibatches > 1 else torch.arange(num_tasks)
        return [chunk for chunk in torch.tensor_split(order, min(self.config.minibatches, num_tasks)) if len(chunk)]

    def context_for(self, task: Task) -> tuple[float, ...]:
        """The task vector a task-conditioned policy sees for `task` (empty: not conditioned)."""
        return ()

    # ---- shared machinery ----------------------------------------------------------------
    def params(self) -> Params:
        return dict(self.policy.named_parameters())

    def policy_weights(self, version: str) -> PolicyWeights:
        return self.policy.to_weights(version)

    def adapt(
        self, support: Sequence[Batch], version: str, params: Params | None = None, steps: int = 1
    ) -> tuple[Params, list[PolicyWeights]]:
        """Adapt theta (or per-task `params` [N, ...]) on each task's support batch, without
        tracking gradients; returns stacked params and one PolicyWeights per task."""
        data = self.prepare(support)
        with torch.no_grad():
            adapted = adapt_batched(
                self.policy,
                self.params() if params is None else params,
                data,
                self.config.inner_lr,
                steps=steps,
                first_order=True,
                per_task_params=params is not None,
            )
        adapted = {k: v.detach() for k, v in adapted.items()}
        weights = [
            self.policy.to_weights(f"{version}/task{i}", p) for i, p in enumerate(unstack(adapted))
        ]
        return adapted, weights

    def prepare(self, batches: Sequence[Batch]) -> TaskData:
        """Stack batches into [N, E, H, ...] tensors with GAE advantages.

        Advantages are normalised per task (`normalization: per_task`: every task on one scale) or
        over the whole batch (`global`: tasks with larger rewards dominate the update). Also adds
        "task_weight" [N] (`task_weights` by task id, else family, else 1) and, when the batches
        carry task vectors, "context" [N, C].
        """
        cfg = self.config
        keys = ("obs", "actions", "logp", "rewards", "mask")
        stacked = {key: np.stack([getattr(b, key) for b in batches]) for key in keys}
        t = {k: torch.as_tensor(v, dtype=torch.float32, device=self.device) for k, v in stacked.items()}
        returns = discounted_returns(t["rewards"], t["mask"], cfg.gamma)
        values = torch.stack(
            [linear_baseline_values(o, r, m) for o, r, m in zip(t["obs"], returns, t["mask"])]
        )
        adv = gae(t["rewards"], values, t["mask"], cfg.gamma, cfg.gae_lambda)
        if cfg.normalization == "global":
            adv = normalize_advantages(adv, t["mask"])
        else:
            adv = torch.stack([normalize_advantages(a, m) for a, m in zip(adv, t["mask"])])
        weights = [cfg.task_weights.get(b.task.task_id, cfg.task_weights.get(b.task.family, 1.0)) for b in batches]
        data = {"obs": t["obs"], "actions": t["actions"], "logp_old": t["logp"], "adv": adv, "mask": t["mask"],
                "task_weight": torch.tensor(weights, dtype=torch.float32, device=self.device)}
        contexts = [np.asarray(b.context, np.float32).reshape(-1) for b in batches]
        lengths = sorted({len(c) for c in contexts})
        if lengths != [0]:
            if len(lengths) != 1:
                raise ValueError(f"batches carry task vectors of different lengths {lengths}; expected one length")
            data["context"] = torch.as_tensor(np.stack(contexts), device=self.device)
        return data

    def observe(self, batches: Sequence[Batch]) -> None:
        """Fold new observations into the normaliser (applied from the next policy version)."""
        for batch in batches:
            self.normalizer.update(batch.obs[batch.mask > 0])
        with torch.no_grad():
            self.policy.obs_mean.copy_(torch.as_tensor(self.normalizer.mean, dtype=torch.float32))
            self.policy.obs_std.copy_(torch.as_tensor(self.normalizer.std, dtype=torch.float32))

    def ppo_terms(self, params: Params, data: TaskData) -> tuple[torch.Tensor, torch.Tensor]:
        """One task's PPO-clip loss and approximate KL(old || new) under `params`."""
        logp = log_prob(self.policy, params, data["obs"], data["actions"])
        loss = ppo_clip_loss(logp, data["logp_old"], data["adv"], data["mask"], self.config.clip)
        return loss, masked_mean(data["logp_old"] - logp, data["mask"])

    def ppo_step(self, task_losses: torch.Tensor, task_kls: torch.Tensor,
                 task_weights: torch.Tensor | None = None) -> dict[str, float]:
        """Weighted task losses minus the entropy bonus -> one optimiser step.

        Each task loss is already a per-task mean (a task with more valid steps does not count
        more); `task_weights` [N] (data["task_weight"]) are rescaled to mean 1 over the batch, so
        uniform weights give the plain mean. With `pcgrad`, conflicting per-task gradients are
        projected (learner.pcgrad) before the usual clip + Adam step.
        """
        n = task_losses.shape[0]
        if task_weights is None:
            task_weights = torch.ones(n, dtype=task_losses.dtype, device=task_losses.device)
        weighted = task_losses * (task_weights / task_weights.mean())
        entropy = gaussian_entropy(self.policy.log_std)
        if self.config.pcgrad:
            params = [p for p in self.policy.parameters() if p.requires_grad]
            self.optimizer.zero_grad(set_to_none=True)
            pcgrad_backward(params, weighted / n, shared_loss=-self.config.entropy_coef * entropy)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm))
            self.optimizer.step()
        else:
            grad_norm = self.step_optimizer(weighted.mean() - self.config.entropy_coef * entropy)
        return {
            "outer_loss": float(weighted.detach().mean()),
            "kl": float(task_kls.detach().mean()),
            "entropy": float(entropy.detach()),
            "grad_norm": grad_norm,
            "policy_std": float(torch.exp(self.policy.log_std.detach()).mean()),
        }

    def step_optimizer(self, loss: torch.Tensor) -> float:
        """Backward + optional global grad-norm clip + Adam step; returns the grad norm."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        return float(norm)

    def state_dict(self) -> dict:
        return {
            "algorithm": self.algorithm,
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "normalizer": self.normalizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["algorithm"] != self.algorithm:
            raise ValueError(f"checkpoint is for {state['algorithm']!r}, not {self.algorithm!r}")
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.normalizer.load_state_dict(state["normalizer"])
