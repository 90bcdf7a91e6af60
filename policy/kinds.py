"""The policy kinds: one :class:`PolicyKind` record per kind, registered once (:data:`KINDS`), and the one place that
maps an old kind name still stored in artifacts to its kind (:data:`RENAMED`).

Deploy, the CLI, evaluation, serving and the robot runtime ask a spec's kind (:func:`policy_kind`) what it is and
how it adapts; none of them branch on a kind's name. A new kind brings its own files (numpy policy, array layout,
learner) and one line in :data:`KINDS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from policy.belief import NumpyBeliefPolicy
from policy.mlp import NumpyGaussianPolicy
from policy.pearl import NumpyPEARLPolicy
from policy.rl2 import NumpyRL2Policy
from policy.rma import NumpyRMAPolicy, check_adaptive
from policy.spec import (
    LAYOUTS,
    RENAMED,
    KindLayout,
    PolicySpec,
    PolicyWeights,
    belief_shapes,
    check_belief,
    check_pearl,
    check_rma,
    kind_name,
    mlp_shapes,
    pearl_shapes,
    rl2_shapes,
    rma_shapes,
)

# How a kind adapts on a robot (`fleet adapt`; deploy maps each way to its job):
# - "gradient": gradient steps of its learner on the robot's episodes (MAML and its kin; a plain MLP);
# - "in trial": in its recurrent state over a trial, nothing to register (RL^2): `fleet eval` measures it;
# - "posterior": PEARL's posterior over z from context episodes, registered with the meta-policy's weights;
# - "fixed task vector": its actor with the task vector fixed to the belief's mean (task inference);
# - "fixed latent": its actor with z fixed to the adaptation module's mean estimate (RMA).
Adaptation = Literal["gradient", "in trial", "posterior", "fixed task vector", "fixed latent"]


@dataclass(frozen=True)
class PolicyKind:
    """What a policy kind is, everywhere it runs."""

    name: str
    policy: Callable[[PolicyWeights], object]  # its numpy policy, built from weights of this kind
    layout: KindLayout  # its array shapes and spec check (policy.spec)
    adaptation: Adaptation
    task_vector: bool = False  # acts on a task vector built from the manifest's `conditioning` (when conditioned)
    latent: bool = False  # acts on a latent z its context encoder infers (policy.context): served with z or context
    belief: bool = False  # carries a belief over the task vector in its state (policy.belief)
    evaluated_in_context: bool = False  # `fleet eval` runs its published weights by numpy inference alone
    check_published: Callable[[PolicyWeights], None] | None = None  # what `fleet eval` refuses to evaluate


KINDS: dict[str, PolicyKind] = {kind.name: kind for kind in (
    PolicyKind("mlp", NumpyGaussianPolicy, KindLayout(mlp_shapes), "gradient", task_vector=True),
    PolicyKind("rl2", NumpyRL2Policy, KindLayout(rl2_shapes), "in trial"),
    PolicyKind("pearl", NumpyPEARLPolicy, KindLayout(pearl_shapes, check_pearl), "posterior", latent=True),
    PolicyKind("belief", NumpyBeliefPolicy, KindLayout(belief_shapes, check_belief), "fixed task vector",
               belief=True, evaluated_in_context=True),
    PolicyKind("rma", NumpyRMAPolicy, KindLayout(rma_shapes, check_rma), "fixed latent", evaluated_in_context=True,
               check_published=check_adaptive),
)}

# old kind name -> its kind: artifacts registered before the renames keep loading (nothing else is read from them)
RENAMED.update({"sac": "pearl", "gru": "rl2"})
LAYOUTS.update({name: kind.layout for name, kind in KINDS.items()})


def policy_kind(spec: PolicySpec | str) -> PolicyKind:
    """The registered kind of `spec` (or of a kind name, an old one included); a ValueError names the known ones."""
    return KINDS[kind_name(spec if isinstance(spec, str) else spec.kind)]
