"""Task conditioning for multi-task policies: what the task vector c is (`TaskEncoder`) and the
torch pieces through which it enters the network (`MultiHead`, `film`, `broadcast_context`).

Modes (`PolicySpec.conditioning`; the numpy twin is workers.policy.NumpyGaussianPolicy):

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
from policy import PolicySpec

ENCODINGS = ("onehot", "params")


def conditioned_spec(spec: PolicySpec, conditioning: str, context_dim: int) -> PolicySpec:
    """`spec` with task conditioning: `context_dim` inputs, and one head per task for multihead."""
    if conditioning == "none":
        return replace(spec, conditioning="none", context_dim=0, num_heads=1)
    heads = context_dim if conditioning == "multihead" else 1
    return replace(spec, conditioning=conditioning, context_dim=context_dim, num_heads=heads)


def flatten_params(params: dict) -> list[float]:
    """Numeric leaves of a task's params, keys sorted, lists flattened; strings are skipped (not numbers)."""
    out: list[float] = []

    def visit(value) -> None:
        if isinstance(value, dict):
            for key in sorted(value):
                visit(value[key])
        elif isinstance(value, list | tuple):
            for item in value:
                visit(item)
        elif isinstance(value, bool | int | float | np.number):
            out.append(float(value))

    visit(params)
    return out


class TaskEncoder:
    """Maps a `Task` to its task vector. Built once from the training tasks; state is plain data.

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
        self.index = {task.task_id: i for i, task in enumerate(train_tasks)}
        self.mean: np.ndarray = np.zeros(0)
        self.std: np.ndarray = np.ones(0)
        if encoding == "params":
            raw = [flatten_params(task.params) for task in train_tasks]
            lengths = {len(r) for r in raw}
            if len(lengths) != 1 or 0 in lengths:
                raise ValueError(f"task_encoding 'params' needs every training task to have the same, non-zero "
                                 f"number of numeric params; got lengths {sorted(lengths)}")
            table = np.asarray(raw, np.float64)
            self.mean, std = table.mean(0), table.std(0)
            self.std = np.where(std > 1e-8, std, 1.0)  # a constant param carries no task information

    @property
    def dim(self) -> int:
        return len(self.index) if self.encoding == "onehot" else len(self.mean)

    def encode(self, task: Task) -> tuple[float, ...]:
        """The task vector of `task` (held-out tasks: uniform one-hot, or their scaled params)."""
        if self.encoding == "onehot":
            k = len(self.index)
            if task.task_id not in self.index:
                return (1.0 / k,) * k
            vector = [0.0] * k
            vector[self.index[task.task_id]] = 1.0
            return tuple(vector)
        raw = np.asarray(flatten_params(task.params), np.float64)
        if raw.shape != self.mean.shape:
            raise ValueError(f"task {task.task_id!r} has {raw.size} numeric params; the training tasks had "
                             f"{self.mean.size}")
        return tuple(float(v) for v in (raw - self.mean) / self.std)

    def state_dict(self) -> dict:
        return {"encoding": self.encoding, "mean": self.mean.tolist(), "std": self.std.tolist()}

    def load_state_dict(self, state: dict) -> None:
        if state["encoding"] != self.encoding:
            raise ValueError(f"checkpoint encodes tasks as {state['encoding']!r}, not {self.encoding!r}")
        self.mean, self.std = np.asarray(state["mean"], np.float64), np.asarray(state["std"], np.float64)


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
