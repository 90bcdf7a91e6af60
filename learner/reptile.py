"""Reptile (Nichol et al. 2018) for RL: adapt each task with plain policy-gradient steps, then move
theta towards the mean of the adapted parameters. First order by construction: no gradient flows
through the inner steps.

Choices:
- Inner loop: `inner_steps` policy-gradient steps on the support episodes (collected with theta),
  then one more step on the query episodes (collected with the adapted policy phi_i, so that step
  is on-policy). Reptile's progress comes from several steps on fresh data; the query episodes are
  that fresh data, so they are used, not only measured. Evaluation and on-robot adaptation use the
  plain inner step (`MetaLearner.adapt`), like MAML.
- Outer step: the pseudo-gradient g = reptile_step * (theta - mean_i phi_i) goes into Adam
  (`outer_lr`) after the global grad-norm clip, rather than theta += eps * (phi - theta) by hand.
  Adam normalises its step per parameter, so `outer_lr` sets how far theta moves per iteration and
  `reptile_step` mostly matters relative to `max_grad_norm`; the gain is one optimiser, one
  checkpointed state and one clip shared with the other learners.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from learner.adaptation import adapt_batched
from learner.base import MetaLearner
from learner.networks import gaussian_entropy
from workers.batch import Batch


class Reptile(MetaLearner):
    """Reptile with PG inner steps (support, then query) and an Adam outer step."""

    algorithm = "reptile"

    def learn(self, support: Sequence[Batch], query: Sequence[Batch]) -> dict[str, float]:
        cfg = self.config
        # The same phi_i the query episodes were collected with (same data, same deterministic steps).
        adapted, _ = self.adapt(support, "reptile", steps=cfg.inner_steps)
        query_data = self.prepare(query)
        with torch.no_grad():
            adapted = adapt_batched(self.policy, adapted, query_data, cfg.inner_lr, steps=1,
                                    first_order=True, per_task_params=True)
        theta = self.params()
        weights = query_data["task_weight"] / query_data["task_weight"].sum()  # task_weights; uniform by default
        pseudo = {k: cfg.reptile_step * (theta[k].detach() - torch.tensordot(weights, adapted[k], dims=1))
                  for k in theta}
        distance = torch.sqrt(sum((g * g).sum() for g in pseudo.values()) / cfg.reptile_step**2)
        grad_norm = self.step_pseudo_gradient(pseudo)
        entropy = gaussian_entropy(self.policy.log_std.detach())
        return {"reptile_distance": float(distance), "grad_norm": grad_norm,
                "entropy": float(entropy), "policy_std": float(torch.exp(self.policy.log_std.detach()).mean())}

    def step_pseudo_gradient(self, pseudo: dict[str, torch.Tensor]) -> float:
        """Install `pseudo` as theta's gradient, clip its global norm, take one Adam step."""
        self.optimizer.zero_grad(set_to_none=True)
        for name, param in self.params().items():
            param.grad = pseudo[name].clone()
        norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        return float(norm)
