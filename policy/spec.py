"""What a policy is, anywhere it runs: a `PolicySpec` (the network's shape) and `PolicyWeights`
(the spec plus plain numpy arrays, versioned). The array layout of every policy kind lives here.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

OBS_CLIP = 10.0
INPUT_CLIP = OBS_CLIP  # previous action and reward enter a GRU clipped to +-this (bounded inputs)
LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class PolicySpec:
    """Shape of a Gaussian MLP policy: what a factory needs to rebuild it anywhere."""

    obs_dim: int
    act_dim: int
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    kind: str = "mlp"  # a registered policy kind (policy.kinds): "mlp", "rl2", "pearl", "belief", "rma"
    conditioning: str = "none"  # how a task context enters an mlp: see CONDITIONING
    context_dim: int = 0  # length of the task context vector (0 = no context)
    num_heads: int = 1  # output heads (conditioning="multihead": one per training task)
    model_sizes: tuple[int, ...] = ()  # kind "belief": task model hidden sizes; "rma": adaptation module's
    privileged_dim: int = 0  # kind "rma": length of the privileged robot vector e the extrinsics encoder reads
    history: int = 0  # kind "rma": (obs, action) steps the adaptation module reads
    encoder_sizes: tuple[int, ...] = ()  # kind "rma": hidden sizes of the extrinsics encoder mu(e)
    dynamics_sizes: tuple[int, ...] = ()  # kind "belief": dynamics model hidden sizes (empty: reward-only belief)

    def __post_init__(self) -> None:
        if self.obs_dim <= 0 or self.act_dim <= 0:
            raise ValueError(f"obs_dim and act_dim must be positive, got {self.obs_dim}, {self.act_dim}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; expected one of {sorted(ACTIVATIONS)}")
        object.__setattr__(self, "kind", kind_name(self.kind))  # an old name (artifacts stored with it) -> its kind
        if self.conditioning not in CONDITIONING:
            raise ValueError(f"unknown conditioning {self.conditioning!r}; expected one of {CONDITIONING}")
        if (self.conditioning == "none") != (self.context_dim == 0):
            raise ValueError(f"conditioning {self.conditioning!r} needs context_dim > 0 exactly when it is "
                             f"not 'none', got context_dim={self.context_dim}")
        LAYOUTS[self.kind].check(self)
        if self.dynamics_sizes and self.kind != "belief":  # the one kind with a dynamics model (policy/belief.py)
            raise ValueError(f"dynamics_sizes (a learned dynamics model) belong to a 'belief' policy, got kind "
                             f"{self.kind!r}")
        if self.num_heads < 1 or (self.num_heads > 1 and self.conditioning != "multihead"):
            raise ValueError(f"num_heads > 1 only with conditioning='multihead', got {self.num_heads}")
        if self.conditioning == "multihead" and self.num_heads != self.context_dim:
            raise ValueError(f"conditioning 'multihead' mixes its heads by the task vector: num_heads "
                             f"({self.num_heads}) must equal context_dim ({self.context_dim})")

    def to_dict(self) -> dict:
        return {
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "hidden_sizes": list(self.hidden_sizes),
            "activation": self.activation,
            "kind": self.kind,
            "conditioning": self.conditioning,
            "context_dim": self.context_dim,
            "num_heads": self.num_heads,
            **({"model_sizes": list(self.model_sizes)} if self.model_sizes else {}),
            **({"dynamics_sizes": list(self.dynamics_sizes)} if self.dynamics_sizes else {}),
            **({"privileged_dim": self.privileged_dim, "history": self.history,
                "encoder_sizes": list(self.encoder_sizes)} if self.privileged_dim or self.history else {}),
        }

    @classmethod
    def from_dict(cls, data: dict) -> PolicySpec:
        # Fields added after the first artifacts have defaults, so older manifests still load.
        return cls(
            obs_dim=int(data["obs_dim"]),
            act_dim=int(data["act_dim"]),
            hidden_sizes=tuple(int(h) for h in data["hidden_sizes"]),
            activation=str(data.get("activation", "tanh")),
            kind=str(data.get("kind", "mlp")),
            conditioning=str(data.get("conditioning", "none")),
            context_dim=int(data.get("context_dim", 0)),
            num_heads=int(data.get("num_heads", 1)),
            model_sizes=tuple(int(h) for h in data.get("model_sizes", ())),
            privileged_dim=int(data.get("privileged_dim", 0)),
            history=int(data.get("history", 0)),
            encoder_sizes=tuple(int(h) for h in data.get("encoder_sizes", ())),
            dynamics_sizes=tuple(int(h) for h in data.get("dynamics_sizes", ())),
        )

    def weight_names(self) -> list[str]:
        """Array names in a weights dict, matching the torch module's state_dict keys."""
        return list(self.weight_shapes())

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Array name -> shape, as the spec's kind lays its arrays out (`KindLayout.shapes`)."""
        return LAYOUTS[self.kind].shapes(self)


def no_check(spec: PolicySpec) -> None:
    """A kind whose specs need nothing beyond the common checks."""


@dataclass(frozen=True)
class KindLayout:
    """How a policy kind lays out its arrays (`shapes`) and what its spec must satisfy (`check`, raises ValueError)."""

    shapes: Callable[[PolicySpec], dict[str, tuple[int, ...]]]
    check: Callable[[PolicySpec], None] = no_check


# name -> layout of every registered kind, and an old kind name (still in stored artifacts) -> the kind's name. Both
# are filled by policy.kinds, the registry of kinds: it sits above the numpy policies, which import this module.
LAYOUTS: dict[str, KindLayout] = {}
RENAMED: dict[str, str] = {}


def kind_name(name: str) -> str:
    """The registered kind `name` is (an old name maps to its kind's), or a ValueError naming the known kinds."""
    kind = RENAMED.get(name, name)
    if kind not in LAYOUTS:
        raise ValueError(f"unknown policy kind {name!r}; known kinds: {', '.join(LAYOUTS)} "
                         f"(and the old names {', '.join(f'{a!r} = {b!r}' for a, b in RENAMED.items())})")
    return kind


def mlp_shapes(spec: PolicySpec) -> dict[str, tuple[int, ...]]:
    """Array name -> shape of a feed-forward Gaussian MLP. Unconditioned specs have exactly the first artifacts'
    arrays; each conditioning mode adds its own (concat only widens `hidden.0.weight`)."""
    c, sizes = spec.context_dim, [spec.obs_dim, *spec.hidden_sizes]
    shapes: dict[str, tuple[int, ...]] = {"obs_mean": (spec.obs_dim,), "obs_std": (spec.obs_dim,)}
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        fan_in = a + c if (i == 0 and spec.conditioning == "concat") else a
        shapes[f"hidden.{i}.weight"], shapes[f"hidden.{i}.bias"] = (b, fan_in), (b,)
    if spec.conditioning == "additive":
        shapes["context_embed.weight"] = (sizes[1], c)
    if spec.conditioning == "film":
        for i, h in enumerate(spec.hidden_sizes):
            shapes[f"film.{i}.weight"], shapes[f"film.{i}.bias"] = (2 * h, c), (2 * h,)
    if spec.conditioning == "multihead":
        shapes["mean_heads.weight"] = (spec.num_heads, spec.act_dim, sizes[-1])
        shapes["mean_heads.bias"] = (spec.num_heads, spec.act_dim)
    else:
        shapes["mean_head.weight"], shapes["mean_head.bias"] = (spec.act_dim, sizes[-1]), (spec.act_dim,)
    shapes["log_std"] = (spec.act_dim,)
    return shapes


CONDITIONING = ("none", "concat", "additive", "multihead", "film")
ACTIVATIONS = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0)}


@dataclass(frozen=True)
class PolicyWeights:
    """A versioned, self-describing set of policy weights (what travels to workers)."""

    spec: PolicySpec
    arrays: dict[str, np.ndarray]
    version: str = "0"
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = set(self.spec.weight_names()) - set(self.arrays)
        if missing:
            raise ValueError(f"policy weights {self.version!r} miss arrays {sorted(missing)}")


def rl2_shapes(spec: PolicySpec) -> dict[str, tuple[int, ...]]:
    """Array name -> shape of a GRU policy (`spec.kind == "rl2"`, one hidden size: the GRU width)."""
    if len(spec.hidden_sizes) != 1:
        raise ValueError(f"a 'rl2' policy has exactly one hidden size (the GRU width), got {spec.hidden_sizes}")
    (hidden,) = spec.hidden_sizes
    d, a = spec.obs_dim, spec.act_dim
    return {
        "obs_mean": (d,), "obs_std": (d,),
        "gru.weight_ih_l0": (3 * hidden, input_dim(spec)), "gru.weight_hh_l0": (3 * hidden, hidden),
        "gru.bias_ih_l0": (3 * hidden,), "gru.bias_hh_l0": (3 * hidden,),
        "mean_head.weight": (a, hidden), "mean_head.bias": (a,), "log_std": (a,),
    }


def input_dim(spec: PolicySpec) -> int:
    """Width of one GRU input: observation, previous action, previous reward, done flag."""
    return spec.obs_dim + spec.act_dim + 2


def check_pearl(spec: PolicySpec) -> None:
    if spec.conditioning != "concat":
        raise ValueError(f"a 'pearl' policy takes its latent z concatenated to the observation: it needs "
                         f"conditioning='concat' and context_dim = latent size, got {spec.conditioning!r}")


def pearl_shapes(spec: PolicySpec) -> dict[str, tuple[int, ...]]:
    """Array name -> shape of a PEARL policy (`spec.kind == "pearl"`): a tanh-Gaussian actor on
    [normalised obs, z] (mean and log-std heads) and the context encoder that infers z, both with
    `hidden_sizes`. The encoder reads one transition [normalised obs, action, reward, normalised next obs]
    (the reward is a function of the next state, so next obs makes the goal easy to read) and outputs a
    Gaussian factor (mean, pre-softplus variance) over the `context_dim` latent (policy.context)."""
    d, a, z = spec.obs_dim, spec.act_dim, spec.context_dim
    shapes: dict[str, tuple[int, ...]] = {"obs_mean": (d,), "obs_std": (d,)}
    for prefix, fan_in, out in (("", d + z, None), ("encoder.", encoder_input_dim(spec), 2 * z)):
        sizes = [fan_in, *spec.hidden_sizes]
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
            shapes[f"{prefix}hidden.{i}.weight"], shapes[f"{prefix}hidden.{i}.bias"] = (n_out, n_in), (n_out,)
        if out is None:
            shapes["mean_head.weight"], shapes["mean_head.bias"] = (a, sizes[-1]), (a,)
            shapes["log_std_head.weight"], shapes["log_std_head.bias"] = (a, sizes[-1]), (a,)
        else:
            shapes["encoder.out.weight"], shapes["encoder.out.bias"] = (out, sizes[-1]), (out,)
    return shapes


def encoder_input_dim(spec: PolicySpec) -> int:
    """Width of one context transition entering a PEARL encoder: observation, action, reward, next observation."""
    return 2 * spec.obs_dim + spec.act_dim + 1


BELIEF_SETTINGS = ("particles", "resample_every", "likelihood_scale", "jitter")


def check_belief(spec: PolicySpec) -> None:
    if spec.conditioning != "concat" or not spec.model_sizes:
        raise ValueError(f"a 'belief' policy acts on [obs, z] and infers z with a task model: it needs "
                         f"conditioning='concat' and model_sizes, got {spec.conditioning!r}, {spec.model_sizes}")


def belief_shapes(spec: PolicySpec) -> dict[str, tuple[int, ...]]:
    """Array name -> shape of a task-inference policy (`spec.kind == "belief"`, policy.belief): the concat actor,
    the task model `model.*` (ReLU MLP with `spec.model_sizes`), the prior box and the inference settings; with
    `spec.dynamics_sizes`, also the dynamics model `dynamics.*` (ReLU MLP [normalised obs, action, z] -> normalised
    obs change), its likelihood scale per obs dimension `dynamics.scale` and its log-likelihood weight
    `dynamics.weight` (policies published without them keep today's reward-only layout)."""
    if not spec.model_sizes:
        raise ValueError("a 'belief' policy spec needs model_sizes (the task model's hidden sizes)")
    actor = dataclasses.replace(spec, kind="mlp", model_sizes=(), dynamics_sizes=())
    shapes = dict(actor.weight_shapes())
    c = spec.context_dim
    shapes.update(relu_mlp_shapes("model", model_input_dim(spec), spec.model_sizes, 1))
    shapes["belief.low"], shapes["belief.high"] = (c,), (c,)
    shapes["belief.settings"] = (len(BELIEF_SETTINGS),)
    if spec.dynamics_sizes:
        shapes.update(relu_mlp_shapes("dynamics", dynamics_input_dim(spec), spec.dynamics_sizes, spec.obs_dim))
        shapes["dynamics.scale"], shapes["dynamics.weight"] = (spec.obs_dim,), (1,)
    return shapes


def relu_mlp_shapes(prefix: str, fan_in: int, sizes: tuple[int, ...], out: int) -> dict[str, tuple[int, ...]]:
    """`prefix.hidden.{i}.weight/bias` and `prefix.out.weight/bias` of a ReLU MLP fan_in -> sizes -> out."""
    shapes: dict[str, tuple[int, ...]] = {}
    dims = [fan_in, *sizes]
    for i, (n_in, n_out) in enumerate(itertools.pairwise(dims)):
        shapes[f"{prefix}.hidden.{i}.weight"], shapes[f"{prefix}.hidden.{i}.bias"] = (n_out, n_in), (n_out,)
    shapes[f"{prefix}.out.weight"], shapes[f"{prefix}.out.bias"] = (out, dims[-1]), (out,)
    return shapes


def dynamics_input_dim(spec: PolicySpec) -> int:
    """Width of one dynamics-model input: observation, action, task vector."""
    return spec.obs_dim + spec.act_dim + spec.context_dim


def model_input_dim(spec: PolicySpec) -> int:
    """Width of one task-model input: observation, action, next observation, task vector."""
    return 2 * spec.obs_dim + spec.act_dim + spec.context_dim


def check_rma(spec: PolicySpec) -> None:
    """An "rma" spec: an actor conditioned on z (concat, film or additive), z from the extrinsics encoder mu(e)
    (privileged) or from the adaptation module psi(last `history` (obs, action) steps, obs) on the robot; every
    size must be set."""
    if spec.conditioning not in ("concat", "film", "additive") or spec.context_dim < 1:
        raise ValueError(f"an 'rma' policy acts on obs and z: it needs conditioning 'concat', 'film' or 'additive' and "
                         f"context_dim = the latent size, got {spec.conditioning!r}, {spec.context_dim}")
    if spec.privileged_dim < 1 or spec.history < 1 or not spec.model_sizes or not spec.encoder_sizes:
        raise ValueError(f"an 'rma' policy needs privileged_dim >= 1, history >= 1, model_sizes (adaptation module) "
                         f"and encoder_sizes (extrinsics encoder), got {spec.privileged_dim}, {spec.history}, "
                         f"{spec.model_sizes}, {spec.encoder_sizes}")


def rma_shapes(spec: PolicySpec) -> dict[str, tuple[int, ...]]:
    """Array name -> shape of an RMA policy (`spec.kind == "rma"`, policy.rma): the z-conditioned actor
    (`policy.mlp` names, context = the latent z), the extrinsics encoder `extrinsics.*` (ReLU MLP e -> z), the
    adaptation module `adaptation.*` (ReLU MLP [history, obs] -> z) and `rma.mode` (1: z from the adaptation
    module, 0: from e)."""
    actor = dataclasses.replace(spec, kind="mlp", model_sizes=(), privileged_dim=0, history=0, encoder_sizes=())
    shapes = dict(actor.weight_shapes())
    z = spec.context_dim
    for prefix, fan_in, sizes in (("extrinsics", spec.privileged_dim, spec.encoder_sizes),
                                  ("adaptation", adaptation_input_dim(spec), spec.model_sizes)):
        dims = [fan_in, *sizes]
        for i, (n_in, n_out) in enumerate(itertools.pairwise(dims)):
            shapes[f"{prefix}.hidden.{i}.weight"], shapes[f"{prefix}.hidden.{i}.bias"] = (n_out, n_in), (n_out,)
        shapes[f"{prefix}.out.weight"], shapes[f"{prefix}.out.bias"] = (z, dims[-1]), (z,)
    shapes["rma.mode"] = (1,)
    return shapes


def adaptation_input_dim(spec: PolicySpec) -> int:
    """Width of the RMA adaptation module's input: `history` entries [normalised obs, action], then the current
    normalised obs."""
    return spec.history * (spec.obs_dim + spec.act_dim) + spec.obs_dim
