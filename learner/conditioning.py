"""Task conditioning for multi-task policies: what the task vector c is (`TaskEncoder`) and the
torch pieces through which it enters the network (`MultiHead`, `film`, `broadcast_context`).

Modes (`PolicySpec.conditioning`; the numpy twin is policy.mlp.NumpyGaussianPolicy):

- concat:    c appended to the normalised observation;
- additive:  a learned linear embedding E c added to the first hidden pre-activation;
- multihead: one output head per training task, mixed by c (a one-hot c picks one head);
- film:      per hidden layer [gamma, beta] = F_i c + f_i, pre-activation h -> (1 + gamma) h + beta.

Task vectors (`LearnerConfig.task_encoding`):

- onehot: the training task's index among the learner's `train_tasks`; a task outside the training
          set (held out) gets the uniform vector 1/K - no training task is favoured;
- params: the task's numeric params flattened (keys sorted, lists flattened), standardised with a
          mean/std fixed once from the training tasks (kept in the learner state).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from fleet.tasks import Task
from policy import PolicySpec, policy_kind
from policy.taskvec import ENCODINGS, TaskVectorEncoder, flatten_params

__all__ = ["ENCODINGS", "MultiHead", "TaskEncoder", "broadcast_context", "conditioned_spec",
           "conditioning_manifest", "film", "flatten_params"]


def conditioned_spec(spec: PolicySpec, conditioning: str, context_dim: int) -> PolicySpec:
    """`spec` with task conditioning: `context_dim` inputs, and one head per task for multihead."""
    if conditioning == "none":
        return replace(spec, conditioning="none", context_dim=0, num_heads=1)
    heads = context_dim if conditioning == "multihead" else 1
    return replace(spec, conditioning=conditioning, context_dim=context_dim, num_heads=heads)


class TaskEncoder:
    """Maps a `Task` to its task vector. Built once from the training tasks; state is plain data. The vector
    itself is built by `policy.taskvec.TaskVectorEncoder`, the very code the robot runtime runs (its manifest
    form: `to_manifest`), so training and deployment cannot drift.

    >>> encoder = TaskEncoder("onehot", train_tasks)
    >>> encoder.encode(train_tasks[2])     # (0.0, 0.0, 1.0, 0.0, ...)
    """

    def __init__(self, encoding: str, train_tasks: Sequence[Task]):
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown task_encoding {encoding!r}; expected one of {ENCODINGS}")
        if not train_tasks:
            raise ValueError("a task-conditioned learner needs its training tasks (train_tasks) to build task "
                             "vectors; got none")
        self.encoding = encoding
        self.vectors = TaskVectorEncoder.from_tasks(encoding, [(t.family, t.task_id, t.params) for t in train_tasks])
        self.index = self.vectors.index

    @property
    def mean(self) -> np.ndarray:
        return self.vectors.mean

    @property
    def std(self) -> np.ndarray:
        return self.vectors.std

    @property
    def dim(self) -> int:
        return self.vectors.dim

    def encode(self, task: Task) -> tuple[float, ...]:
        """The task vector of `task` (held-out tasks: uniform one-hot, or their scaled params)."""
        vector = self.vectors.encode(task.params, task.family, task.task_id)
        return tuple(float(v) for v in vector)

    def to_manifest(self) -> dict:
        """What the artifact's manifest carries (``manifest["conditioning"]``) for the robot to encode tasks."""
        return self.vectors.to_manifest()

    def state_dict(self) -> dict:
        return {"encoding": self.encoding, "mean": self.mean.tolist(), "std": self.std.tolist()}

    def load_state_dict(self, state: dict) -> None:
        if state["encoding"] != self.encoding:
            raise ValueError(f"checkpoint encodes tasks as {state['encoding']!r}, not {self.encoding!r}")
        self.vectors.mean = np.asarray(state["mean"], np.float64)
        self.vectors.std = np.asarray(state["std"], np.float64)


def conditioning_manifest(spec: PolicySpec, encoder: TaskEncoder | None) -> dict | None:
    """``manifest["conditioning"]`` of a policy: its mode and everything a robot needs to build task vectors the
    way training did (None for a task-agnostic policy). `encoder`: the learner's (MultiTaskPPO.encoder)."""
    if spec.conditioning == "none" or not policy_kind(spec).task_vector:
        return None
    if encoder is None:
        raise ValueError(f"a {spec.conditioning!r}-conditioned policy needs its learner's task encoder to be "
                         "deployable; the learner has none")
    if encoder.dim != spec.context_dim:
        raise ValueError(f"the task encoder builds vectors of length {encoder.dim}, the policy takes "
                         f"{spec.context_dim}")
    return {"mode": spec.conditioning, **encoder.to_manifest()}


def broadcast_context(context: torch.Tensor, batch_shape: torch.Size, dim: int) -> torch.Tensor:
    """A task vector [C] (or [..., C]) broadcast to [*batch_shape, C], checked against the spec."""
    if context.shape[-1:] != (dim,):
        raise ValueError(f"a task-conditioned policy needs a task vector of length {dim}, got shape "
                         f"{tuple(context.shape)}")
    return context.expand(*batch_shape, dim)


def film(pre: torch.Tensor, layer: nn.Linear, context: torch.Tensor) -> torch.Tensor:
    """FiLM on a pre-activation: (1 + gamma(c)) * h + beta(c)."""
    gamma, beta = layer(context).chunk(2, dim=-1)
    return (1.0 + gamma) * pre + beta


class MultiHead(nn.Module):
    """K linear output heads; the output is the c-weighted sum of the heads' outputs."""

    def __init__(self, num_heads: int, in_dim: int, out_dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default init, per head
        self.weight = nn.Parameter(torch.empty(num_heads, out_dim, in_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_heads, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        outs = torch.einsum("...h,kah->...ka", x, self.weight) + self.bias
        return (context.unsqueeze(-1) * outs).sum(-2)
