"""An MLflow pyfunc for `mlflow models serve`, logged as *models from code*.

MLflow stores this file as source (not a pickle) plus the policy's safetensors + manifest as
artifacts; `load_context` verifies them with `PolicyArtifact.load` (mandatory content digest, and the
digest recorded in the MLmodel's model_config at logging time). Input: observations (a
DataFrame or array, one row per observation); output: the policy's mean actions.

    mlflow models serve -m runs:/<run_id>/serving --env-manager local --host 127.0.0.1 -p 5001
    curl -d '{"inputs": [[...20 floats...]]}' -H 'Content-Type: application/json' 127.0.0.1:5001/invocations
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np
from mlflow.models import set_model


class PolicyModel(mlflow.pyfunc.PythonModel):
    """Mean action of a metafleet policy for a batch of observations."""

    def load_context(self, context) -> None:
        from policy import NumpyGaussianPolicy
        from policy.artifact import PolicyArtifact

        expected = (context.model_config or {}).get("content_sha256")
        artifact = PolicyArtifact.load(context.artifacts["policy"], expected_digest=expected,
                                       expected_from="digest recorded in the serving model's MLmodel")
        self.policy = NumpyGaussianPolicy(artifact.weights)
        self.obs_dim = artifact.weights.spec.obs_dim

    def predict(self, context, model_input, params=None):
        obs = np.asarray(getattr(model_input, "values", model_input), dtype=np.float32)
        obs = obs.reshape(-1, self.obs_dim)
        if not np.isfinite(obs).all():
            raise ValueError("observations must be finite")
        return self.policy.mean(obs)


set_model(PolicyModel())
