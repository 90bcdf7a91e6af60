"""`make_policy`: the numpy policy for a spec's kind (the registry, policy.kinds, says which)."""

from __future__ import annotations

from policy.belief import NumpyBeliefPolicy
from policy.kinds import policy_kind
from policy.mlp import NumpyGaussianPolicy
from policy.pearl import NumpyPEARLPolicy
from policy.rl2 import NumpyRL2Policy
from policy.rma import NumpyRMAPolicy
from policy.spec import PolicyWeights

Policy = NumpyGaussianPolicy | NumpyRL2Policy | NumpyPEARLPolicy | NumpyBeliefPolicy | NumpyRMAPolicy


def make_policy(weights: PolicyWeights) -> Policy:
    """The numpy policy of `weights.spec.kind` (policy.kinds): feed-forward Gaussian MLP, recurrent (RL^2) GRU,
    PEARL's z-conditioned tanh-Gaussian actor (its context encoder: policy.context.ContextEncoder), the
    task-inference policy (policy.belief) or the RMA policy (policy.rma)."""
    return policy_kind(weights.spec).policy(weights)
