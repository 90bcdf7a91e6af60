"""Multi-step MAML trained the way it is evaluated (ProMP's multi-step inner loop, Rothfuss et al. 2019).

With `learner.inner_steps: k`, one meta-iteration collects k + 1 phases per task, as the evaluation does:

    D_0 with theta, phi_1 = theta - a_1 grad L(theta; D_0)
    D_1 with phi_1, phi_2 = phi_1 - a_2 grad L(phi_1; D_1)
    ...
    Q   with phi_k  -> outer PPO-clip on Q through phi_k(...phi_1(theta))

Each inner loss L(phi_{j-1}; D_{j-1}) is the importance-weighted policy gradient against the policy that
collected D_{j-1} (learner.adaptation.inner_loss), so the outer gradient reaches theta through every step,
to second order unless `first_order`, including the dependence of each step's sampling distribution on theta.

`learner.inner_rates: per_step` learns one scalar rate per inner step a_1..a_k (initialised at `inner_lr`),
trained by the outer loss. They travel with the policy as one array `inner_lr/steps` [k]
(`StepRatedPolicy.to_weights` / `load_weights`), so the evaluation and `fleet adapt`, which load a published
artifact, take adaptation step j with a_j. An adaptation step past k (evaluating more rounds than trained)
uses a_k. The step index travels with the adapted parameters (`AdaptedParams.steps`), so callers that feed
`adapt`'s output back into `adapt` (MetaLearner.adaptation, deploy/adapt.py) need not count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.func import vmap

from learner.adaptation import Params, TaskData, inner_step
from learner.networks import GaussianMLPPolicy
from policy import PolicySpec, PolicyWeights

STEP_RATES = "inner_lr/steps"  # the per-step inner rates in published weights: float32 [inner_steps]


def support_stream(step: int) -> str:
    """Seed stream of the support phase collected for inner step `step` + 1 (learner/seeds.py): "support"
    for theta's episodes (step 0, as single-step MAML), "support<j>" for phi_j's."""
    return "support" if step == 0 else f"support{step}"


class AdaptedParams(dict):
    """Per-task adapted parameters [N, ...] that remember how many inner steps produced them (`steps`), so
    the next `adapt` call takes inner step `steps` + 1 with its own rate."""

    def __init__(self, params: Params, steps: int):
        super().__init__(params)
        self.steps = steps


class StepRatedPolicy(GaussianMLPPolicy):
    """The Gaussian MLP plus one learned inner rate per inner step (`step_rates` [k]).

    The rates are a plain leaf tensor, not an `nn.Parameter`: the inner step must not adapt them and
    `state_dict` must not hold them (the learner's own state_dict does), but they ride along in
    `to_weights` / `load_weights` as the `inner_lr/steps` array.
    """

    def __init__(self, spec: PolicySpec, init_std: float = 1.0, inner_lr: float = 0.1, steps: int = 1):
        super().__init__(spec, init_std)
        if steps < 1:
            raise ValueError(f"StepRatedPolicy needs at least one inner step, got {steps}")
        self.step_rates = torch.full((steps,), float(inner_lr)).requires_grad_()

    def reset_rates(self, value: float) -> None:
        """All rates `value`, on the parameters' device."""
        device = self.log_std.device
        self.step_rates = torch.full(self.step_rates.shape, float(value), device=device).requires_grad_()

    def rate(self, step: int) -> torch.Tensor:
        """The rate of inner step `step` + 1 (0-based `step`); steps past the last use the last rate."""
        return self.step_rates[min(step, self.step_rates.shape[0] - 1)]

    def to_weights(self, version: str, params: dict[str, torch.Tensor] | None = None) -> PolicyWeights:
        weights = super().to_weights(version, params)
        rates = self.step_rates.detach().cpu().numpy().astype(np.float32, copy=True)
        return PolicyWeights(weights.spec, {**weights.arrays, STEP_RATES: rates}, version)

    def load_weights(self, weights: PolicyWeights) -> None:
        """Network arrays into the module; `inner_lr/steps` (if present) into the rates. Weights without it
        (e.g. a fixed-rate policy loaded as a baseline) keep the current rates."""
        network = {k: v for k, v in weights.arrays.items() if k != STEP_RATES}
        rates = weights.arrays.get(STEP_RATES)
        if rates is not None and tuple(np.shape(rates)) != tuple(self.step_rates.shape):
            raise ValueError(f"weights {weights.version!r} carry {np.size(rates)} per-step inner rates "
                             f"({STEP_RATES} of shape {tuple(np.shape(rates))}); this learner adapts with "
                             f"learner.inner_steps={self.step_rates.shape[0]} and expects shape "
                             f"{tuple(self.step_rates.shape)}")
        super().load_weights(PolicyWeights(weights.spec, network, weights.version))
        if rates is not None:
            with torch.no_grad():
                self.step_rates.copy_(torch.as_tensor(np.asarray(rates, np.float32)))


def adapt_chain(module: nn.Module, params: Params, chain: Sequence[TaskData], rates: Sequence[float | Params],
                first_order: bool = False, per_task_params: bool = False) -> Params:
    """Inner step j on `chain[j]` with `rates[j]`, for every task of the stacked data at once (vmap).

    `chain[j]` is [N, ...] data collected with phi_j (phi_0 = theta); returns phi_k [N, ...]. Gradients
    flow back to `params` and to tensor rates through every step (second order unless `first_order`).
    """
    if len(chain) != len(rates):
        raise ValueError(f"adapt_chain: {len(chain)} data sets for {len(rates)} inner rates; expected one each")

    def adapt_one(p: Params, data: tuple[TaskData, ...]) -> Params:
        for d, lr in zip(data, rates):
            p = inner_step(module, p, d, lr, first_order)
        return p

    return vmap(adapt_one, in_dims=(0 if per_task_params else None, 0))(dict(params), tuple(chain))
