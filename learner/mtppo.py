"""Multi-task PPO baseline: one policy trained on every task's episodes, no adaptation during
training. Same interface (and the same evaluation with 0..k inner steps) as the meta-learners,
so "does meta-learning pay?" is measured, not assumed.

The policy is task-agnostic (`conditioning: none`) or sees a task vector (learner.conditioning:
concat | additive | multihead | film, encoded onehot | params). Task losses are per-task means,
optionally weighted (`task_weights`) and de-conflicted (`pcgrad`) in `MetaLearner.ppo_step`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fleet.robots import robot_param_dim
from fleet.tasks import Task
from learner.adaptation import Params, TaskData, batched, log_prob
from learner.base import MetaLearner
from learner.conditioning import TaskEncoder, conditioned_spec
from learner.config import LearnerConfig
from learner.losses import masked_mean, ppo_clip_loss
from policy import PolicySpec, PolicyWeights
from workers.batch import Batch


def check_task_weights(weights: dict[str, float], train_tasks: Sequence[Task]) -> None:
    """Every `task_weights` key must name a training task id or family (a typo would weigh nothing)."""
    if not train_tasks:
        return
    known = {t.task_id for t in train_tasks} | {t.family for t in train_tasks}
    unknown = sorted(set(weights) - known)
    if unknown:
        families = sorted({t.family for t in train_tasks})
        raise ValueError(f"task_weights keys {unknown} name no training task or family; expected a family "
                         f"({families}) or a task id such as {train_tasks[0].task_id!r}")


class MultiTaskPPO(MetaLearner):
    """PPO on the union of support and query episodes; tasks weighted uniformly unless configured."""

    algorithm = "mtppo"

    def __init__(self, spec: PolicySpec, config: LearnerConfig, train_tasks: Sequence[Task] = ()):
        check_task_weights(config.task_weights, train_tasks)
        self.encoder: TaskEncoder | None = None
        if config.conditioning == "multihead" and config.task_encoding != "onehot":
            raise ValueError("conditioning 'multihead' has one head per training task and mixes them by a one-hot "
                             f"task vector: it needs task_encoding 'onehot', got {config.task_encoding!r}")
        # task_encoding "robot": the context is each request's robot vector (Collect.robot_params), not a task's
        self.robot_params: tuple[str, ...] = tuple(config.robot_params) if config.task_encoding == "robot" else ()
        if self.robot_params:
            spec = self._robot_conditioned(spec, config)
        else:
            spec = self._task_conditioned(spec, config, train_tasks)
        super().__init__(spec, config, train_tasks)

    def _robot_conditioned(self, spec: PolicySpec, config: LearnerConfig) -> PolicySpec:
        dim = robot_param_dim(self.robot_params)
        if spec.conditioning == "none":
            return conditioned_spec(spec, config.conditioning, dim)
        if spec.conditioning != config.conditioning or spec.context_dim != dim:
            raise ValueError(f"the policy spec ({spec.conditioning!r}, context {spec.context_dim}) does not take the "
                             f"robot vector of {list(self.robot_params)} ({config.conditioning!r}, length {dim})")
        return spec

    def _task_conditioned(self, spec: PolicySpec, config: LearnerConfig, train_tasks: Sequence[Task]) -> PolicySpec:
        if config.conditioning != "none" and train_tasks:
            self.encoder = TaskEncoder(config.task_encoding, train_tasks)
        if spec.conditioning == "none" and config.conditioning != "none":
            if self.encoder is None:
                raise ValueError(f"conditioning {config.conditioning!r} needs the training tasks (train_tasks) to "
                                 "size the task vector")
            return conditioned_spec(spec, config.conditioning, self.encoder.dim)
        if spec.conditioning != config.conditioning:
            raise ValueError(f"the policy spec is conditioned {spec.conditioning!r} but learner.conditioning is "
                             f"{config.conditioning!r}")
        if self.encoder is not None and self.encoder.dim != spec.context_dim:
            raise ValueError(f"the policy takes task vectors of length {spec.context_dim}, but the training tasks "
                             f"encode to length {self.encoder.dim}")
        return spec

    def context_for(self, task: Task) -> tuple[float, ...]:
        """The task vector for `task` (empty when the policy is task-agnostic or reads its robot's vector)."""
        if self.policy.spec.conditioning == "none" or self.robot_params:
            return ()
        if self.encoder is None:
            raise ValueError("this learner was built without training tasks: it cannot encode tasks")
        return self.encoder.encode(task)

    def adapt_for_training(self, support: Sequence[Batch], version: str) -> list[PolicyWeights]:
        # No adaptation: query episodes are more on-policy data for the same theta.
        return [self.policy_weights(version)] * len(support)

    def ppo_terms(self, params: Params, data: TaskData) -> tuple[torch.Tensor, torch.Tensor]:
        """One task's PPO-clip loss (a mean over its own valid steps) and approximate KL, with its task vector."""
        logp = log_prob(self.policy, params, data["obs"], data["actions"], data.get("context"))
        loss = ppo_clip_loss(logp, data["logp_old"], data["adv"], data["mask"], self.config.clip)
        return loss, masked_mean(data["logp_old"] - logp, data["mask"])

    def learn(self, support: Sequence[Batch], query: Sequence[Batch]) -> dict[str, float]:
        terms = batched(self.ppo_terms, per_task_params=False)
        return self.ppo_update(self.prepare([*support, *query]), lambda minibatch: terms(self.params(), minibatch))

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.encoder is not None:
            state["task_encoder"] = self.encoder.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        encoder_state = state.pop("task_encoder", None)
        super().load_state_dict(state)
        if encoder_state is not None and self.encoder is not None:
            self.encoder.load_state_dict(encoder_state)
