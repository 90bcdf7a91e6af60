"""Every registered policy version is an MLflow model: ``mlflow models serve -m models:/NAME@ALIAS`` serves it.

A version's directory (``runs:/<run>/policy``, what the registry's ``source`` points at) holds:

    weights.safetensors, manifest.json      the policy artifact, byte for byte as PolicyArtifact.save wrote it
    MLmodel                                 python_function flavor: loader_module = deploy.mlflow_model, data = "."
                                            metadata.metafleet: the content_sha256 / weights_sha256 at publish time
    input_example.json, serving_input_example.json, requirements.txt, python_env.yaml, conda.yaml

The two artifact files stay at the top of the directory, so `fleet pull`/`run`/`eval`/`promote`/`adapt` read
exactly what they read before (they never open the MLmodel). MLflow serving imports this module, which is
installed with metafleet: nothing stored in the artifact store is executed (no pickled ``python_model``, no
models-from-code source file). :func:`_load_pyfunc` verifies the artifact like `fleet pull` does — the content
digest in the manifest, the digest recorded in the MLmodel, and, where the registry is reachable, the
``content_sha256`` / ``weights_sha256`` tags of every version registered from the MLmodel's run — and only then
builds the model (``deploy.serving.PolicyModel.from_artifact``). The model returns every action within the
manifest's action bounds, through the robots' safety layer, and refuses to load without finite bounds.

    mlflow models serve -m models:/reach-maml@production --env-manager local --host 127.0.0.1 -p 5001
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from pathlib import Path

import yaml
from mlflow.models import Model

from policy.artifact import MANIFEST_FILE, WEIGHTS_FILE, ArtifactError, PolicyArtifact

RUN_ID = re.compile(r"^[A-Za-z0-9_-]+$")  # an MLflow run id (no path tricks)

log = logging.getLogger(__name__)
LOADER_MODULE = "deploy.mlflow_model"
MLMODEL_FILE = "MLmodel"
METADATA_KEY = "metafleet"  # the MLmodel's metadata section written by save_policy_model
RECORDED = "digest recorded in the serving model's MLmodel"
PIP_REQUIREMENTS = ["metafleet", "numpy", "safetensors"]


def signature_and_example(artifact: PolicyArtifact):
    """The serving signature and input example for the artifact's policy kind; the request format is
    ``deploy.serving``'s, which owns ``predict`` (a [B, obs_dim] float32 tensor for a plain MLP, named columns
    for the other kinds; the example starts from the normaliser's mean observation)."""
    from deploy.serving import serving_signature

    return serving_signature(artifact)


def save_policy_model(artifact: PolicyArtifact, path: str | Path, run_id: str | None = None,
                      artifact_path: str = "policy") -> str:
    """Write ``artifact`` as an MLflow model directory at ``path`` (which must not exist or be empty);
    returns the content digest. ``run_id``/``artifact_path`` say where it will be logged (recorded in the
    MLmodel: the serving loader finds the versions registered from that run by them)."""
    import mlflow.pyfunc

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        digest = artifact.save(tmp)
        signature, example = signature_and_example(artifact)
        metadata = {METADATA_KEY: {"content_sha256": digest, "weights_sha256": artifact.manifest["weights_sha256"],
                                   "format": artifact.manifest["format"], "files": [WEIGHTS_FILE, MANIFEST_FILE]}}
        mlflow.pyfunc.save_model(str(path), loader_module=LOADER_MODULE, signature=signature, input_example=example,
                                 pip_requirements=PIP_REQUIREMENTS, metadata=metadata,
                                 mlflow_model=Model(run_id=run_id, artifact_path=artifact_path))
        for name in (WEIGHTS_FILE, MANIFEST_FILE):
            shutil.copyfile(Path(tmp) / name, path / name)  # byte for byte what save() wrote and the digest covers
    model = Model.load(str(path / MLMODEL_FILE))
    model.flavors["python_function"]["data"] = "."  # the data: the two artifact files beside the MLmodel
    model.model_size_bytes = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    model.save(str(path / MLMODEL_FILE))
    return digest


def recorded_digest(model_dir: str | Path) -> tuple[str, dict]:
    """The content digest the MLmodel in ``model_dir`` recorded at publish time, and the MLmodel (YAML, parsed
    safely: reading it executes nothing)."""
    path = Path(model_dir) / MLMODEL_FILE
    try:
        mlmodel = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{str(model_dir)!r} has no {MLMODEL_FILE} beside the policy files: it is not a "
                            "metafleet MLflow model; re-publish the version to serve it") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ArtifactError(f"cannot read {str(path)!r}: {exc}") from None
    recorded = ((mlmodel or {}).get("metadata") or {}).get(METADATA_KEY) if isinstance(mlmodel, dict) else None
    digest = recorded.get("content_sha256") if isinstance(recorded, dict) else None
    if not isinstance(digest, str):
        raise ArtifactError(f"{str(path)!r} records no metadata.{METADATA_KEY}.content_sha256: it was not written by "
                            "metafleet's Registry.publish; re-publish the version to serve it")
    return digest, mlmodel


def load_verified(model_dir: str | Path) -> PolicyArtifact:
    """The policy in a metafleet MLflow model directory, verified as `fleet pull` verifies it: the manifest's own
    digest, the digest recorded in the MLmodel and, where the registry is reachable, the version tags."""
    model_dir = Path(model_dir)
    digest, mlmodel = recorded_digest(model_dir)
    artifact = PolicyArtifact.load(model_dir, expected_digest=digest, expected_from=RECORDED)
    run_id = mlmodel.get("run_id")
    versions = _registered_versions(run_id) if isinstance(run_id, str) else None
    if versions is None:
        log.warning("metafleet: %s verified against its manifest and MLmodel only (no registry reachable for run "
                    "%s)", model_dir, run_id)
        return artifact
    served = {"content_sha256": artifact.digest, "weights_sha256": artifact.manifest["weights_sha256"]}
    for name, version, tags in versions:
        for key, actual in served.items():
            expected = tags.get(key)
            if expected is not None and expected != actual:
                raise ArtifactError(f"{key.replace('_', ' ')} {actual} does not match the registry tag of "
                                    f"models:/{name}/{version} ({expected}): the served files changed after "
                                    "they were registered; refusing to serve them")
    log.info("metafleet: serving content sha256 %s, verified against its MLmodel and %d registered version(s)",
             artifact.digest, len(versions))
    return artifact


def _registered_versions(run_id: str) -> list[tuple[str, str, dict]] | None:
    """(name, version, tags) of every version registered from ``run_id`` (one run publishes one artifact);
    None when no registry is reachable from here (then the MLmodel's digest is the expectation)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from learner.tracking import TrackingError, check_tracking_uri

    uri = mlflow.get_registry_uri()
    if not RUN_ID.match(run_id) or (uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file()):
        return None  # a run id that cannot be looked up, or no store here (do not create an empty one)
    try:
        check_tracking_uri(uri)
        found = MlflowClient(mlflow.get_tracking_uri(), uri).search_model_versions(f"run_id = '{run_id}'")
    except (TrackingError, MlflowException, OSError) as exc:  # unreachable or refused: fall back, and say so
        log.warning("metafleet: registry %s not usable to check the version tags (%s)", uri, exc)
        return None
    return [(mv.name, str(mv.version), dict(mv.tags)) for mv in found]


class PyfuncPolicy:
    """What MLflow's PyFuncModel calls: ``predict(model_input, params)`` on ``deploy.serving.PolicyModel``."""

    def __init__(self, model):
        self.model = model

    def predict(self, model_input, params=None):
        return self.model.predict(None, model_input, params=params)


def _load_pyfunc(data_path: str, model_config: dict | None = None) -> PyfuncPolicy:
    """MLflow's entry point (``loader_module``): verify, then build the serving model. ``data_path`` is the
    model directory (the MLmodel's ``data: .``)."""
    from deploy.serving import PolicyModel

    return PyfuncPolicy(PolicyModel.from_artifact(load_verified(data_path)))
