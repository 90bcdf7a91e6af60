"""Multi-task PPO baseline: one task-agnostic policy trained on every task's episodes, no
adaptation during training. Same interface (and the same evaluation with 0..k inner steps)
as the meta-learners, so "does meta-learning pay?" is measured, not assumed."""

from __future__ import annotations

from collections.abc import Sequence

from learner.adaptation import batched, select
from learner.base import MetaLearner
from workers.batch import Batch
from workers.policy import PolicyWeights


class MultiTaskPPO(MetaLearner):
    """PPO on the union of support and query episodes; tasks weighted uniformly."""

    algorithm = "mtppo"

    def adapt_for_training(self, support: Sequence[Batch], version: str) -> list[PolicyWeights]:
        # No adaptation: query episodes are more on-policy data for the same theta.
        return [self.policy_weights(version)] * len(support)

    def update(self, support: Sequence[Batch], query: Sequence[Batch]) -> dict[str, float]:
        data = self.prepare([*support, *query])
        for _ in range(self.config.ppo_epochs):
            for idx in self.task_minibatches(len(support) + len(query)):
                losses, kls = batched(self.ppo_terms, per_task_params=False)(self.params(), select(data, idx))
                metrics = self.ppo_step(losses, kls)
        return metrics
