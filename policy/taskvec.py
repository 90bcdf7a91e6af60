"""Task vectors of task-conditioned policies: the one encoder that training and the robot both use.

A task-conditioned policy (`PolicySpec.conditioning` != "none") reads a task vector c besides the observation.
How c is built from a task is fixed at training time and travels in the artifact's manifest
(``manifest["conditioning"]``, :meth:`TaskVectorEncoder.to_manifest`), so the learner (learner.conditioning)
and the robot runtime (deploy.runtime) build the very same vector:

- ``onehot``: the index of the training task among the learner's training tasks; any other task (held out)
  gets the uniform vector 1/K - no training task is favoured. The learner knows a task by its id; a robot
  knows it by its params (and family), matched against the training tasks listed in the manifest.
- ``params``: the task's numeric params flattened (keys sorted, lists flattened, strings skipped),
  standardised with the mean/std of the training tasks (a constant param gets std 1).

>>> encoder = TaskVectorEncoder.from_tasks("params", [("reach", "reach/train/0", {"goal": [0.5, 0, 0.4]}), ...])
>>> encoder.encode({"goal": [0.6, 0.1, 0.4]})            # np.ndarray, float32
>>> TaskVectorEncoder.from_manifest(encoder.to_manifest()).encode({"goal": [0.6, 0.1, 0.4]})   # the same
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

ENCODINGS = ("onehot", "params")
MATCH_TOL = 1e-9  # params within this (absolute and relative) of a training task's are that training task


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


def same_params(a: Any, b: Any) -> bool:
    """Whether two task param trees are the same task: same keys and lengths, numbers within MATCH_TOL."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_params(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_params(x, y) for x, y in zip(a, b))
    numbers = (int, float, np.number)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=MATCH_TOL, abs_tol=MATCH_TOL)
    return a == b


class TaskVectorEncoder:
    """Task -> task vector, from the training tasks (``(family, task_id, params)`` triples); state is plain data."""

    def __init__(self, encoding: str, train_tasks: Sequence[tuple[str, str, dict]],
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown task_encoding {encoding!r}; expected one of {ENCODINGS}")
        if not train_tasks:
            raise ValueError("a task-conditioned policy needs its training tasks to build task vectors; got none")
        self.encoding = encoding
        self.train_tasks = [(str(f), str(t), dict(p)) for f, t, p in train_tasks]
        self.index = {task_id: i for i, (_, task_id, _) in enumerate(self.train_tasks)}
        self.mean = np.zeros(0) if mean is None else np.asarray(mean, np.float64)
        self.std = np.ones(0) if std is None else np.asarray(std, np.float64)
        if encoding == "params" and mean is None:
            raw = [flatten_params(params) for _, _, params in self.train_tasks]
            lengths = {len(r) for r in raw}
            if len(lengths) != 1 or 0 in lengths:
                raise ValueError(f"task_encoding 'params' needs every training task to have the same, non-zero "
                                 f"number of numeric params; got lengths {sorted(lengths)}")
            table = np.asarray(raw, np.float64)
            self.mean, std = table.mean(0), table.std(0)
            self.std = np.where(std > 1e-8, std, 1.0)  # a constant param carries no task information
        if encoding == "params" and (self.mean.shape != self.std.shape or self.mean.ndim != 1 or not self.mean.size
                                     or not np.all(np.isfinite(self.mean)) or not np.all(self.std > 0)):
            raise ValueError(f"task_encoding 'params' needs finite mean and positive std of one equal length, got "
                             f"{self.mean.tolist()} and {self.std.tolist()}")

    @classmethod
    def from_tasks(cls, encoding: str, train_tasks: Sequence[tuple[str, str, dict]]) -> TaskVectorEncoder:
        """Fix the encoding from the training tasks (the params mean/std are computed here, once)."""
        return cls(encoding, train_tasks)

    @property
    def dim(self) -> int:
        return len(self.train_tasks) if self.encoding == "onehot" else len(self.mean)

    def training_index(self, params: dict, family: str | None = None, task_id: str | None = None) -> int | None:
        """Position of the training task this is (by id when given, else by family and params); None: held out."""
        if task_id is not None:
            return self.index.get(task_id)
        for i, (fam, _, train_params) in enumerate(self.train_tasks):
            if (family is None or fam == family) and same_params(params, train_params):
                return i
        return None

    def encode(self, params: dict, family: str | None = None, task_id: str | None = None) -> np.ndarray:
        """The task vector (float64) of a task given by its params (and family, and id if the caller knows it)."""
        if self.encoding == "onehot":
            k, i = len(self.train_tasks), self.training_index(params, family, task_id)
            if i is None:
                return np.full(k, 1.0 / k)
            vector = np.zeros(k)
            vector[i] = 1.0
            return vector
        raw = np.asarray(flatten_params(params), np.float64)
        if raw.shape != self.mean.shape:
            names = sorted(self.train_tasks[0][2])
            raise ValueError(f"task {task_id or params!r} has {raw.size} numeric params; the training tasks had "
                             f"{self.mean.size} (params {names}, keys sorted, lists flattened)")
        return (raw - self.mean) / self.std

    def to_manifest(self) -> dict:
        """What a robot needs to build the same vectors (strict-JSON-able)."""
        return {"encoding": self.encoding, "dim": self.dim, "mean": self.mean.tolist(), "std": self.std.tolist(),
                "param_order": "numeric leaves, dict keys sorted, lists flattened, strings skipped",
                "param_names": sorted(self.train_tasks[0][2]),
                "train_tasks": [{"family": f, "task_id": t, "params": p} for f, t, p in self.train_tasks]}

    @classmethod
    def from_manifest(cls, data: dict) -> TaskVectorEncoder:
        """Inverse of :meth:`to_manifest`; ValueError naming what is missing or inconsistent."""
        if not isinstance(data, dict):
            raise ValueError(f"manifest 'conditioning' must be an object, got {type(data).__name__}")
        try:
            tasks = [(t["family"], t["task_id"], t["params"]) for t in data["train_tasks"]]
            encoder = cls(data["encoding"], tasks, data.get("mean") if data["encoding"] == "params" else None,
                          data.get("std") if data["encoding"] == "params" else None)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"manifest 'conditioning' lacks {exc} (expected encoding, mean, std, train_tasks)") \
                from None
        if "dim" in data and int(data["dim"]) != encoder.dim:
            raise ValueError(f"manifest 'conditioning' says dim {data['dim']} but encodes to {encoder.dim}")
        return encoder


def mixture_default(family: Any) -> str | None:
    """The family a mixture runs when none is named: the heaviest (ties: the first name in sorted order).
    A single family is its own default; None for anything else."""
    if isinstance(family, str):
        return family
    if isinstance(family, dict) and family:
        return sorted(family, key=lambda name: (-float(family[name]), name))[0]
    return None
