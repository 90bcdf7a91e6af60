"""`make_policy`: the numpy policy for a spec's kind (the one place that chooses among them)."""

from __future__ import annotations

from policy.gru import NumpyRecurrentPolicy
from policy.mlp import NumpyGaussianPolicy
from policy.spec import PolicyWeights


def make_policy(weights: PolicyWeights) -> NumpyGaussianPolicy | NumpyRecurrentPolicy:
    """The numpy policy for `weights.spec.kind`: feed-forward Gaussian MLP or recurrent (RL^2) GRU."""
    if weights.spec.kind == "gru":
        return NumpyRecurrentPolicy(weights)
    return NumpyGaussianPolicy(weights)
