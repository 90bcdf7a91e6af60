"""MAML for RL (Finn et al. 2017) with a ProMP-style outer objective (Rothfuss et al. 2019):
inner = policy gradient on support episodes, outer = PPO-clip on query episodes through
phi_i(theta), differentiated to second order unless `first_order`.

With `inner_steps: k` > 1, training collects the way evaluation adapts: support episodes with theta, one
step, fresh support episodes with phi_1, ..., query episodes with phi_k, and the outer loss goes through
the whole chain (learner/maml_chain.py). `inner_rates: per_step` learns one rate per inner step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fleet.tasks import Task
from learner.adaptation import Params, adapt_batched, batched, select, unstack
from learner.base import MetaLearner
from learner.interface import Collect, Plan
from learner.maml_chain import STEP_RATES, AdaptedParams, StepRatedPolicy, adapt_chain, support_stream
from policy import PolicySpec, PolicyWeights
from workers.batch import Batch


class MAML(MetaLearner):
    """Model-agnostic meta-learning; `config.first_order` drops the second-order terms."""

    algorithm = "maml"

    # ---- per-step rates (inner_rates: per_step) -------------------------------------------
    @property
    def per_step(self) -> bool:
        return self.config.inner_rates == "per_step"

    def make_policy(self, spec: PolicySpec):
        if not self.per_step:
            return super().make_policy(spec)
        cfg = self.config
        policy = StepRatedPolicy(spec, cfg.init_std, cfg.inner_lr, cfg.inner_steps).to(self.device)
        policy.reset_rates(cfg.inner_lr)  # after .to(): the rates live where the parameters do
        return policy

    def parameter_groups(self) -> list:
        if not self.per_step:
            return super().parameter_groups()
        return [{"params": list(self.policy.parameters())}, {"params": [self.policy.step_rates]}]

    def inner_step_size(self, step: int = 0):
        """alpha of inner step `step` + 1 in the outer loss: the scalar `inner_lr`, or (per_step) that step's
        learned rate (Meta-SGD: its learned per-parameter rates)."""
        return self.policy.rate(step) if self.per_step else self.config.inner_lr

    def inner_rates(self, step: int = 0) -> float | Params | torch.Tensor:
        """The step size `adapt` uses for inner step `step` + 1 (no gradient)."""
        return self.policy.rate(step).detach() if self.per_step else super().inner_rates()

    # ---- collection: k + 1 phases, each with the policy of its step -----------------------
    def collect(self, tasks: Sequence[Task], iteration: int, episodes: int) -> Plan:
        k = self.config.inner_steps
        if k == 1:  # support with theta, query with phi: MetaLearner's two phases
            return (yield from super().collect(tasks, iteration, episodes))
        tasks, version = tuple(tasks), f"it{iteration}"
        contexts = tuple(self.context_for(t) for t in tasks)
        weights, params, chain = tuple(self.weights_for(tasks, version)), None, []
        for j in range(k):
            batches = yield Collect("support", tasks, weights, episodes, support_stream(j), contexts,
                                    self.trial_episodes, label="pre" if j == 0 else f"step{j}")
            chain.extend(batches)
            params, adapted = self.adapt(batches, f"{version}/step{j + 1}", params=params, step=j)
            weights = tuple(adapted)
        query = yield Collect("query", tasks, weights, episodes, "query", contexts, self.trial_episodes,
                              label="post")
        self.collected = (chain, list(query))  # support = the k phases, phase-major

    def adapt_for_training(self, support: Sequence[Batch], version: str) -> list[PolicyWeights]:
        if self.config.inner_steps > 1:  # k steps on one support batch is not what training or evaluation does
            raise ValueError(f"{self.algorithm} with inner_steps={self.config.inner_steps} collects one support "
                             "phase per inner step: drive collect() (it adapts between phases), not "
                             "adapt_for_training")
        return super().adapt_for_training(support, version)

    def adapt(self, support: Sequence[Batch], version: str, params: Params | None = None, steps: int = 1,
              step: int | None = None) -> tuple[Params, list[PolicyWeights]]:
        """MetaLearner.adapt, with per-step rates: `steps` inner steps starting at inner step `step` + 1 (default:
        the step `params` reached, as `adapt` returned them; 0 from theta), each with its own rate."""
        if not self.per_step:
            return super().adapt(support, version, params=params, steps=steps)
        if step is None:
            if params is not None and not isinstance(params, AdaptedParams):
                raise ValueError(f"{self.algorithm} with per-step inner rates adapts already-adapted params: pass "
                                 "step= (the number of inner steps they took) or the params adapt returned")
            step = 0 if params is None else params.steps
        data = self.prepare(support)
        rates = [self.inner_rates(step + j) for j in range(steps)]
        with torch.no_grad():
            adapted = adapt_chain(self.policy, self.params() if params is None else params, [data] * steps, rates,
                                  first_order=True, per_task_params=params is not None)
        adapted = AdaptedParams({k: v.detach() for k, v in adapted.items()}, step + steps)
        return adapted, [self.policy.to_weights(f"{version}/task{i}", p) for i, p in enumerate(unstack(adapted))]

    # ---- the meta-update -------------------------------------------------------------------
    def learn(self, support: Sequence[Batch], query: Sequence[Batch]) -> dict[str, float]:
        cfg = self.config
        if cfg.inner_steps == 1 and not self.per_step:
            return self.learn_one_step(support, query)
        k, n = cfg.inner_steps, len(query)
        if len(support) != k * n:
            raise ValueError(f"{self.algorithm} with inner_steps={k} learns from {k} support phases of {n} tasks "
                             f"({k * n} batches, phase-major, as collect() gathers them), got {len(support)}")
        chain = [self.prepare(support[j * n:(j + 1) * n]) for j in range(k)]
        query_data = self.prepare(query)
        for idx in self.minibatch_epochs(n):
            rates = [self.inner_step_size(j) for j in range(k)]
            adapted = adapt_chain(self.policy, self.params(), [select(d, idx) for d in chain], rates,
                                  cfg.first_order)
            query_batch = select(query_data, idx)
            losses, kls = batched(self.ppo_terms)(adapted, query_batch)
            metrics = self.ppo_step(losses, kls, query_batch["task_weight"])
        if self.per_step:
            rates = self.policy.step_rates.detach().cpu().tolist()
            metrics.update({f"inner_lr_step{j + 1}": float(r) for j, r in enumerate(rates)})
        return metrics

    def learn_one_step(self, support: Sequence[Batch], query: Sequence[Batch]) -> dict[str, float]:
        """Single-step MAML with a fixed (or Meta-SGD's) inner rate: one support phase, as before chains."""
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

    # ---- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = super().state_dict()
        return {**state, STEP_RATES: self.policy.step_rates.detach().clone()} if self.per_step else state

    def load_state_dict(self, state: dict) -> None:
        if self.per_step and STEP_RATES not in state:
            raise ValueError(f"checkpoint has no per-step inner rates ({STEP_RATES!r}): it was saved by a run with "
                             "learner.inner_rates=fixed, and this learner has inner_rates=per_step")
        if not self.per_step and STEP_RATES in state:
            raise ValueError(f"checkpoint holds per-step inner rates ({STEP_RATES!r}): it was saved by a run with "
                             "learner.inner_rates=per_step, and this learner has inner_rates=fixed")
        super().load_state_dict(state)
        if self.per_step:
            with torch.no_grad():
                self.policy.step_rates.copy_(state[STEP_RATES])
