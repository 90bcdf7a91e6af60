"""Meta-SGD (Li et al. 2017): MAML whose inner step size is learned, one rate per parameter entry.

phi_i = theta - alpha (.) grad L_support_i(theta), with alpha a tensor per adapted parameter
(initialised to `inner_lr`) optimised with theta by the same outer PPO-clip loss and the same Adam
(second order unless `first_order`; alpha gets its gradient either way). The rates travel with the
policy: `RatedPolicy.to_weights` adds them as `inner_lr/<param name>` arrays and `load_weights`
reads them back, so evaluation and `fleet adapt` (which load a published artifact) adapt with the
learned rates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from learner.adaptation import Params
from learner.maml import MAML
from learner.networks import GaussianMLPPolicy
from policy import PolicySpec, PolicyWeights
from workers.batch import Batch

RATE_PREFIX = "inner_lr/"


class RatedPolicy(GaussianMLPPolicy):
    """The Gaussian MLP plus Meta-SGD's per-parameter inner rates.

    The rates are plain leaf tensors, not `nn.Parameter`s: they must not be adapted by the inner
    step nor appear in `state_dict`, but they ride along in `to_weights` / `load_weights`.
    """

    def __init__(self, spec: PolicySpec, init_std: float = 1.0, inner_lr: float = 0.1):
        super().__init__(spec, init_std)
        self.inner_rates: dict[str, torch.Tensor] = {}
        self.reset_rates(inner_lr)

    def reset_rates(self, value: float) -> None:
        """One rate per parameter entry, all `value`, on each parameter's device."""
        self.inner_rates = {name: torch.full_like(p.detach(), value).requires_grad_()
                            for name, p in self.named_parameters()}

    def to_weights(self, version: str, params: dict[str, torch.Tensor] | None = None) -> PolicyWeights:
        weights = super().to_weights(version, params)
        rates = {RATE_PREFIX + k: v.detach().cpu().numpy().astype(np.float32, copy=True)
                 for k, v in self.inner_rates.items()}
        return PolicyWeights(weights.spec, {**weights.arrays, **rates}, version)

    def load_weights(self, weights: PolicyWeights) -> None:
        """Network arrays into the module; `inner_lr/*` arrays (if any) into the rates."""
        rates = {k.removeprefix(RATE_PREFIX): v for k, v in weights.arrays.items() if k.startswith(RATE_PREFIX)}
        unknown = sorted(set(rates) - set(self.inner_rates))
        if unknown:
            raise ValueError(f"weights {weights.version!r} carry inner rates for unknown parameters {unknown}; "
                             f"expected names among {sorted(self.inner_rates)}")
        network = {k: v for k, v in weights.arrays.items() if not k.startswith(RATE_PREFIX)}
        super().load_weights(PolicyWeights(weights.spec, network, weights.version))
        with torch.no_grad():
            for name, value in rates.items():
                self.inner_rates[name].copy_(torch.as_tensor(np.asarray(value)))


class MetaSGD(MAML):
    """MAML with learned per-parameter inner rates (`self.rates`), used by every adaptation."""

    algorithm = "metasgd"

    def make_policy(self, spec: PolicySpec) -> RatedPolicy:
        policy = RatedPolicy(spec, self.config.init_std, self.config.inner_lr).to(self.device)
        policy.reset_rates(self.config.inner_lr)  # after .to(): the rates live where the parameters do
        return policy

    def parameter_groups(self) -> list:
        return [{"params": list(self.policy.parameters())}, {"params": list(self.rates.values())}]

    @property
    def rates(self) -> Params:
        return self.policy.inner_rates

    def inner_rates(self, step: int = 0) -> Params:
        """`adapt` uses the learned rates (the same at every inner step) instead of the scalar `inner_lr`."""
        return {k: v.detach() for k, v in self.rates.items()}

    def inner_step_size(self, step: int = 0) -> Params:
        return self.rates  # phi_i(theta, alpha): the outer gradient reaches theta and alpha

    def learn(self, support: Sequence[Batch], query: Sequence[Batch]) -> dict[str, float]:
        metrics = super().learn(support, query)
        flat = torch.cat([v.detach().reshape(-1) for v in self.rates.values()])
        return {**metrics, "inner_lr_mean": float(flat.mean()), "inner_lr_min": float(flat.min()),
                "inner_lr_max": float(flat.max())}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "inner_lr": {k: v.detach().clone() for k, v in self.rates.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            for name, value in state["inner_lr"].items():
                self.rates[name].copy_(value)
