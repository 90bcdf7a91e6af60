"""An MLflow pyfunc for `mlflow models serve`: every policy kind, stateless.

MLflow serving loads it through metafleet's ``loader_module`` (deploy.mlflow_model), which verifies the artifact and
builds it with `PolicyModel.from_artifact`. Nothing is unpickled and no code is read from the artifact store.

Input (one row per request; a DataFrame, a dict of columns, or for a plain MLP just an array of observations):

- MLP: ``obs`` (or a bare [B, obs_dim] array) -> the mean actions [B, act_dim] (``action`` with columns);
- task-conditioned (concat, additive, multihead, FiLM): ``obs`` + ``task`` (the task's params, a dict or its
  JSON, ``family`` inside for a mixture) or ``task_vector`` -> ``action``;
- recurrent (RL^2 GRU, belief, RMA): ``obs`` + ``state`` (the previous response's; absent or empty at a trial's
  start: the GRU's zeros, a fresh belief = the prior, an empty RMA history), ``prev_action``, ``prev_reward``,
  ``prev_done`` -> ``action``, ``state`` (a belief policy's particle belief flattened,
  ``policy.belief.BeliefState.to_flat``, also ``belief_mean``, the task vector it believes; an RMA policy's
  flat (obs, action) history);
- a task-conditioned version registered with a fixed context vector (``conditioning.fixed``, e.g. a belief or
  RMA policy adapted by ``fleet adapt``): ``obs`` alone;
- PEARL: ``obs`` + ``z``, or the context transitions ``context_obs``, ``context_actions``, ``context_rewards``,
  ``context_next_obs`` (a list of transitions per row; empty = the prior) -> ``action``, ``z``.

Every ``action`` it returns is within the manifest's action bounds, through the same safety layer robots act
behind (``deploy.safety.SafetyLayer.bound``: clipped into the box, a non-finite row replaced by the safe action;
no rate limit, as serving keeps no previous action); a manifest without finite bounds that hold the safe action
is refused at load. The recurrent ``state`` is the policy's own, from its unbounded proposal.

Serving is stateless: a recurrent policy's state goes out with each response and comes back with the next
request; PEARL acts with the posterior mean given the row's context.

    mlflow models serve -m models:/<name>@<alias> --env-manager local --host 127.0.0.1 -p 5001
    curl -d '{"inputs": [[...20 floats...]]}' -H 'Content-Type: application/json' 127.0.0.1:5001/invocations
    curl -d '{"dataframe_records": [{"obs": [...], "task": {"goal": [0.6, 0.1, 0.4]}}]}' ...
"""

from __future__ import annotations

import json

import numpy as np

CONTEXT_COLUMNS = ("context_obs", "context_actions", "context_rewards", "context_next_obs")


class PolicyModel:
    """Deterministic action of a metafleet policy of any kind for a batch of requests (MLflow calls it through
    ``deploy.mlflow_model.PyfuncPolicy``)."""

    @classmethod
    def from_artifact(cls, artifact) -> PolicyModel:
        """The model for a `PolicyArtifact` its loader has verified (the registry's load path, or tests)."""
        model = cls()
        model._setup(artifact)
        return model

    def _setup(self, artifact) -> None:
        from policy.driver import PolicyDriver

        self.manifest = artifact.manifest
        self.driver = PolicyDriver(artifact.weights, artifact.manifest)
        self.policy, self.spec = self.driver.policy, artifact.weights.spec
        self.obs_dim = self.spec.obs_dim
        self.safety = _safety_layer(artifact.manifest, self.spec)

    @property
    def kind(self) -> str:
        """How requests reach the policy (its columns), from what its kind is (policy.kinds, through the driver)."""
        d = self.driver
        return "recurrent" if d.recurrent else "latent" if d.latent else "conditioned" if d.conditioned else "plain"

    def predict(self, context, model_input, params=None):
        """The bounded actions for a batch of requests (see the module docstring for the input per kind)."""
        out = self._propose(model_input)
        if isinstance(out, dict):
            return {**out, "action": self.safety.bound(out["action"]).tolist()}
        return self.safety.bound(out)

    def _propose(self, model_input):
        """The policy's own actions, before the bounds."""
        columns = _columns(model_input)
        if columns is None:  # a bare array of observations
            if self.kind != "plain":
                raise ValueError(f"this {self.kind} policy needs named columns, not bare observations: "
                                 f"{', '.join(required_columns(self.kind))}")
            return self.policy.mean(self._obs(model_input))
        if "obs" not in columns:
            raise ValueError(f"input has columns {sorted(columns)}; expected 'obs' (one observation per row) and, for "
                             f"this {self.kind} policy, {', '.join(required_columns(self.kind)) or 'nothing else'}")
        obs = self._obs(columns["obs"])
        if self.kind == "recurrent":
            return self._recurrent(obs, columns)
        if self.kind == "latent":
            z = self._latents(obs.shape[0], columns)
            return {"action": self.policy.mean(obs, context=z).tolist(), "z": z.tolist()}
        if self.kind == "conditioned":
            return {"action": self.policy.mean(obs, context=self._task_vectors(obs.shape[0], columns)).tolist()}
        return {"action": self.policy.mean(obs).tolist()}

    # ---- per kind ---------------------------------------------------------------------------------
    def _obs(self, value) -> np.ndarray:
        obs = _matrix(value, "obs", self.obs_dim)
        if not np.isfinite(obs).all():
            raise ValueError("observations must be finite")
        return obs

    def _task_vectors(self, rows: int, columns: dict) -> np.ndarray:
        from policy.driver import choose_family

        dim = self.spec.context_dim
        if "task_vector" in columns:
            return _matrix(columns["task_vector"], "task_vector", dim, rows)
        if self.driver.fixed_vector is not None:  # registered with its task vector: acts on it, as `fleet run` does
            return np.repeat(self.driver.fixed_vector[None], rows, axis=0)
        if "task" not in columns:
            names = self.driver.task_vectors.to_manifest()["param_names"]
            raise ValueError(f"this {self.spec.conditioning!r}-conditioned policy needs a 'task' column (the task's "
                             f"params {names}, with 'family' for a mixture) or a 'task_vector' column of length {dim}")
        tasks = list(columns["task"])
        if len(tasks) != rows:
            raise ValueError(f"'task' has {len(tasks)} rows, 'obs' has {rows}")
        out = []
        for task in tasks:
            task = json.loads(task) if isinstance(task, str) else task
            if not isinstance(task, dict):
                raise ValueError(f"each 'task' must be an object of task params (or its JSON), got {task!r}")
            family, params = choose_family(self.manifest, task)
            out.append(self.driver.task_vectors.encode(params, family))
        return np.asarray(out, np.float32)

    def _recurrent(self, obs: np.ndarray, columns: dict) -> dict:
        rows, act_dim = obs.shape[0], self.spec.act_dim
        initial = self.policy.initial_state(rows)
        belief = self.driver.belief
        if not (isinstance(initial, np.ndarray) or belief):
            raise ValueError(f"a {self.spec.kind!r} policy's state is not an array: it cannot travel through "
                             "stateless serving; run it with `fleet run`")
        state = columns.get("state")
        given = [s is not None and len(s) > 0 for s in (state if state is not None else [])]
        if state is None or not any(given):
            state = initial
        elif belief:
            state = self._belief_state(state, given, initial, rows)
        else:
            state = _matrix(state, "state", int(np.prod(initial.shape[1:])), rows).reshape(initial.shape)
        prev_action = _matrix(columns.get("prev_action", np.zeros((rows, act_dim))), "prev_action", act_dim, rows)
        prev_reward = _vector(columns.get("prev_reward", np.zeros(rows)), "prev_reward", rows)
        prev_done = _vector(columns.get("prev_done", np.zeros(rows)), "prev_done", rows)
        actions, _, state = self.policy.sample_step(obs, prev_action, prev_reward, prev_done, state,
                                                    np.random.default_rng(0), True)
        if belief:
            return {"action": actions.tolist(), "state": state.to_flat().tolist(), "belief_mean": state.mean().tolist()}
        return {"action": actions.tolist(), "state": np.asarray(state).reshape(rows, -1).tolist()}

    def _belief_state(self, column, given: list[bool], initial, rows: int):
        """The belief state of each row: its ``state`` (a previous response's), or the prior where empty."""
        from policy.belief import BeliefState, flat_size

        size = flat_size(self.policy.particles, self.spec.context_dim, self.obs_dim)
        if len(given) != rows:
            raise ValueError(f"'state' has {len(given)} rows, 'obs' has {rows}")
        flat = initial.to_flat()
        for i, value in enumerate(column):
            if given[i]:
                try:
                    row = np.asarray(value, np.float64).reshape(-1)
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"'state' row {i} must be {size} numbers (a previous response's): {exc}") from None
                if row.shape != (size,):
                    raise ValueError(f"'state' row {i} has {row.size} numbers; this belief policy's state has {size} "
                                     "(send back the previous response's 'state', or nothing for the prior)")
                flat[i] = row
        return BeliefState.from_flat(flat, self.policy.particles, self.spec.context_dim, self.obs_dim)

    def _latents(self, rows: int, columns: dict) -> np.ndarray:
        dim = self.spec.context_dim
        if "z" in columns:
            return _matrix(columns["z"], "z", dim, rows)
        given = [c for c in CONTEXT_COLUMNS if c in columns]
        if not given:
            raise ValueError(f"a PEARL policy needs its task latent: a 'z' column (length {dim}) or the context "
                             f"transitions {', '.join(CONTEXT_COLUMNS)} (one list of transitions per row)")
        if len(given) != len(CONTEXT_COLUMNS):
            raise ValueError(f"context transitions need all of {CONTEXT_COLUMNS}; missing "
                             f"{sorted(set(CONTEXT_COLUMNS) - set(given))}")
        out = []
        for i in range(rows):
            parts = [np.asarray(columns[c][i], np.float64) for c in CONTEXT_COLUMNS]
            if parts[2].size == 0:
                out.append(np.zeros(dim))
                continue
            mu, _ = self.driver.encoder.posterior(*parts)
            out.append(mu)
        return np.asarray(out, np.float32)


def _safety_layer(manifest: dict, spec):
    """The robots' safety layer for the manifest's spaces (bounds only); refuse to serve without it."""
    from deploy.runtime import _spaces as manifest_spaces  # the runtime's own reading of the spaces
    from deploy.safety import SafetyConfig, SafetyLayer
    from policy.artifact import ArtifactError

    try:
        obs_shape, low, high = manifest_spaces(manifest, spec)
        return SafetyLayer(obs_shape, low, high, SafetyConfig(max_action_rate=None))
    except ValueError as exc:  # ArtifactError too
        raise ArtifactError(f"refusing to serve without the safety layer's action bounds: {exc}") from None


def serving_signature(artifact):
    """(signature, input example) of the serving model for this artifact's policy kind: a [B, obs_dim] tensor for a
    plain MLP; named columns otherwise (``obs`` required; the kind's own columns, see the module docstring; the
    alternatives optional), so that `mlflow models serve` accepts every kind's requests."""
    import pandas as pd
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema, TensorSpec

    from policy.driver import PolicyDriver, manifest_families

    spec, manifest = artifact.weights.spec, artifact.manifest
    driver = PolicyDriver(artifact.weights, manifest)
    obs = np.asarray(artifact.weights.arrays["obs_mean"], np.float64).reshape(-1).tolist()
    if not (driver.recurrent or driver.latent or driver.conditioned):
        signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, spec.obs_dim))]),
                                   outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, spec.act_dim))]))
        return signature, np.asarray([obs], np.float32)
    vector, matrix = Array(DataType.double), Array(Array(DataType.double))
    columns = [ColSpec(vector, "obs")]
    example: dict = {"obs": [obs]}
    if driver.conditioned:
        columns += [ColSpec(DataType.string, "task", required=False), ColSpec(vector, "task_vector", required=False)]
        if driver.fixed_vector is None:  # a fixed task vector needs no task: the example is obs alone
            family, _, params = driver.task_vectors.train_tasks[0]
            task = {**params, **({"family": family} if len(manifest_families(manifest)) > 1 else {})}
            example["task"] = [json.dumps(task)]
    elif driver.recurrent:
        columns += [ColSpec(vector, "state", required=False), ColSpec(vector, "prev_action", required=False),
                    ColSpec(DataType.double, "prev_reward", required=False),
                    ColSpec(DataType.double, "prev_done", required=False)]
        example |= {"state": [[]], "prev_action": [[0.0] * spec.act_dim], "prev_reward": [0.0], "prev_done": [0.0]}
    else:
        columns += [ColSpec(vector, "z", required=False), ColSpec(matrix, "context_obs", required=False),
                    ColSpec(matrix, "context_actions", required=False), ColSpec(vector, "context_rewards",
                                                                               required=False),
                    ColSpec(matrix, "context_next_obs", required=False)]
        example["z"] = [[0.0] * spec.context_dim]
    return ModelSignature(inputs=Schema(columns)), pd.DataFrame(example)


def required_columns(kind: str) -> tuple[str, ...]:
    """The columns besides ``obs`` a policy needs, by how requests reach it (`PolicyModel.kind`; module docstring)."""
    return {"plain": (), "conditioned": ("task (or task_vector)",),
            "recurrent": ("state", "prev_action", "prev_reward", "prev_done"),
            "latent": ("z (or " + ", ".join(CONTEXT_COLUMNS) + ")",)}[kind]


def _columns(model_input) -> dict | None:
    """Named columns of a DataFrame or a dict; None for a bare array (or a list of rows)."""
    if hasattr(model_input, "columns"):  # a DataFrame: named columns, or numbered ones of a bare array
        if any(isinstance(c, str) and not c.isdigit() for c in model_input.columns):
            return {str(c): list(model_input[c]) for c in model_input.columns}
        return None
    if isinstance(model_input, dict):
        return dict(model_input)
    if isinstance(model_input, list) and model_input and isinstance(model_input[0], dict):
        keys = {k for row in model_input for k in row}
        return {k: [row.get(k) for row in model_input] for k in keys}
    return None


def _matrix(value, name: str, width: int, rows: int | None = None) -> np.ndarray:
    """Rows of `width` floats (a [B, width] array, a list of lists, or a bare array reshaped)."""
    raw = getattr(value, "values", value)
    try:
        out = np.asarray([np.asarray(r, np.float32).reshape(-1) for r in raw], np.float32) \
            if isinstance(raw, list | tuple) or (isinstance(raw, np.ndarray) and raw.dtype == object) \
            else np.asarray(raw, np.float32)
        out = out.reshape(-1, width)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"'{name}' must hold rows of {width} numbers: {exc}") from None
    if rows is not None and out.shape[0] != rows:
        raise ValueError(f"'{name}' has {out.shape[0]} rows of {width}, 'obs' has {rows}")
    return out


def _vector(value, name: str, rows: int) -> np.ndarray:
    out = np.asarray(getattr(value, "values", value), np.float32).reshape(-1)
    if out.shape != (rows,):
        raise ValueError(f"'{name}' must hold one number per row ({rows}), got shape {out.shape}")
    return out
