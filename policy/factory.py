"""`make_policy`: the numpy policy for a spec's kind (the one place that chooses among them)."""

from __future__ import annotations

from policy.belief import NumpyBeliefPolicy
from policy.gru import NumpyRecurrentPolicy
from policy.mlp import NumpyGaussianPolicy
from policy.rma import NumpyRMAPolicy
from policy.sac import NumpySACPolicy
from policy.spec import PolicyWeights

Policy = NumpyGaussianPolicy | NumpyRecurrentPolicy | NumpySACPolicy | NumpyBeliefPolicy | NumpyRMAPolicy


def make_policy(weights: PolicyWeights) -> Policy:
    """The numpy policy for `weights.spec.kind`: feed-forward Gaussian MLP, recurrent (RL^2) GRU or PEARL's
    z-conditioned tanh-Gaussian actor (its context encoder: policy.context.ContextEncoder) or the task-inference
    policy (policy.belief) or the RMA policy (policy.rma)."""
    if weights.spec.kind == "gru":
        return NumpyRecurrentPolicy(weights)
    if weights.spec.kind == "sac":
        return NumpySACPolicy(weights)
    if weights.spec.kind == "belief":
        return NumpyBeliefPolicy(weights)
    if weights.spec.kind == "rma":
        return NumpyRMAPolicy(weights)
    return NumpyGaussianPolicy(weights)
