"""metafleet's policy package: what a robot carries. Imports numpy and safetensors only.

- `policy.spec`: `PolicySpec` (a network's shape, every kind's array layout) and `PolicyWeights`.
- `policy.mlp`, `policy.rl2`, `policy.pearl`: the numpy policies (Gaussian MLP, plain or task-conditioned; RL^2 GRU;
  PEARL's z-conditioned tanh-Gaussian actor). `policy.context`: PEARL's context encoder (task inference).
- `policy.kinds`: the registry of policy kinds (`PolicyKind`: numpy policy, layout, how it adapts and is served);
  `policy.factory.make_policy`: the numpy policy for a spec's kind.
- `policy.taskvec`: task vectors of task-conditioned policies (training and robots build them with the same code).
- `policy.driver.PolicyDriver`: any kind stepped one observation at a time, with its task vector, state or latent.
- `policy.artifact`: the artifact format (safetensors weights + JSON manifest), verified on load.

Workers, the learner and the robot runtime all use this package; it imports nothing else of ours.

>>> from policy import PolicyArtifact, make_policy
>>> artifact = PolicyArtifact.load("policy_dir")
>>> actions, logp = make_policy(artifact.weights).sample(obs, rng)
"""

from policy.artifact import ArtifactError, PolicyArtifact
from policy.context import ContextEncoder
from policy.driver import PolicyDriver
from policy.factory import make_policy
from policy.kinds import KINDS, PolicyKind, policy_kind
from policy.mlp import NumpyGaussianPolicy
from policy.pearl import NumpyPEARLPolicy
from policy.rl2 import NumpyRL2Policy
from policy.spec import INPUT_CLIP, LOG_2PI, OBS_CLIP, PolicySpec, PolicyWeights, input_dim, rl2_shapes
from policy.taskvec import TaskVectorEncoder

__all__ = [
    "INPUT_CLIP",
    "KINDS",
    "LOG_2PI",
    "OBS_CLIP",
    "ArtifactError",
    "ContextEncoder",
    "NumpyGaussianPolicy",
    "NumpyPEARLPolicy",
    "NumpyRL2Policy",
    "PolicyArtifact",
    "PolicyDriver",
    "PolicyKind",
    "PolicySpec",
    "PolicyWeights",
    "TaskVectorEncoder",
    "input_dim",
    "make_policy",
    "policy_kind",
    "rl2_shapes",
]
