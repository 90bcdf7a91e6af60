"""MAML for RL (Finn et al. 2017) with a ProMP-style outer objective (Rothfuss et al. 2019):
inner = policy gradient on support episodes, outer = PPO-clip on query episodes through
phi_i(theta), differentiated to second order unless `first_order`."""

from __future__ import annotations

from collections.abc import Sequence

from learner.adaptation import adapt_batched, batched, select
from learner.base import MetaLearner
from workers.batch import Batch


class MAML(MetaLearner):
    """Model-agnostic meta-learning; `config.first_order` drops the second-order terms."""

    algorithm = "maml"

    def learn(self, support: Sequence[Batch], query: Sequence[Batch]) -> dict[str, float]:
        cfg = self.config
        support_data, query_data = self.prepare(support), self.prepare(query)
        for idx in self.minibatch_epochs(len(support)):
            # phi_i(theta) is recomputed every step: the outer gradient flows through it.
            adapted = adapt_batched(self.policy, self.params(), select(support_data, idx), self.inner_step_size(),
                                    cfg.inner_steps, cfg.first_order)
            query_batch = select(query_data, idx)
            losses, kls = batched(self.ppo_terms)(adapted, query_batch)
            metrics = self.ppo_step(losses, kls, query_batch["task_weight"])
        return metrics

    def inner_step_size(self):
        """alpha of the inner step in the outer loss: the scalar `inner_lr` (Meta-SGD: its learned rates)."""
        return self.config.inner_lr
