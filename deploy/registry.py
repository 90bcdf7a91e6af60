"""The MLflow model registry for policies: publish with tags and aliases, resolve and pull
with digest verification. MLflow stores no content digest, so we keep our own (the artifact's
`content_sha256` in its manifest and as a version tag, see policy/artifact.py) and check both on every load."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from deploy.mlflow_model import RUN_ID, save_policy_model
from deploy.pull_record import PULL_RECORD, recorded_digest
from learner.tracking import resolve_tracking_uri
from policy.artifact import PolicyArtifact

MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w\-]+))$")


class RegistryError(LookupError):
    """A model URI that does not resolve (unknown model, version or alias)."""


@dataclass(frozen=True)
class ResolvedModel:
    uri: str
    source: str
    name: str | None = None
    version: str | None = None
    sha256: str | None = None  # the registry's content_sha256 tag (runs:/: its version's; None: a directory)
    tags: dict | None = None
    weights_sha256: str | None = None  # the version's weights_sha256 tag


def git_commit() -> str:
    """The code version: METAFLEET_GIT_COMMIT if set (Ray jobs upload no .git), else `git rev-parse`."""
    if os.environ.get("METAFLEET_GIT_COMMIT"):
        return os.environ["METAFLEET_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Registry:
    """Policies as MLflow registered-model versions.

    >>> reg = Registry()                                   # MLFLOW_TRACKING_URI or sqlite:///mlflow.db
    >>> version = reg.publish("reach-maml", artifact, run_id, tags={...}, aliases=["candidate"])
    >>> artifact = reg.load("models:/reach-maml@candidate")
    """

    def __init__(self, uri: str | None = None):
        self.uri = resolve_tracking_uri(uri)
        self.client = MlflowClient(self.uri, self.uri)

    def publish(self, name: str, artifact: PolicyArtifact, run_id: str, tags: dict | None = None,
                aliases: tuple[str, ...] = ()) -> str:
        """Log the artifact into `run_id` under `policy/` as an MLflow model (deploy/mlflow_model.py: the two
        artifact files plus an MLmodel whose loader is metafleet's) and register it as a new version."""
        with tempfile.TemporaryDirectory() as tmp:
            digest = save_policy_model(artifact, Path(tmp) / "policy", run_id, "policy")
            weights_digest = artifact.manifest["weights_sha256"]
            self.client.log_artifacts(run_id, str(Path(tmp) / "policy"), "policy")
        source = f"{self.client.get_run(run_id).info.artifact_uri}/policy"
        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        all_tags = {k: str(v) for k, v in (tags or {}).items()} | {"content_sha256": digest,
                                                                  "weights_sha256": weights_digest}
        version = self.client.create_model_version(name, source=source, run_id=run_id, tags=all_tags)
        for alias in aliases:
            self.client.set_registered_model_alias(name, alias, version.version)
        return str(version.version)

    def resolve(self, uri: str) -> ResolvedModel:
        """`models:/name/3`, `models:/name@alias`, `runs:/<id>/policy` or a local directory."""
        match = MODELS_URI.match(uri)
        if match:
            name = match["name"]
            try:
                if match["version"]:
                    mv = self.client.get_model_version(name, match["version"])
                else:
                    mv = self.client.get_model_version_by_alias(name, match["alias"])
            except MlflowException as exc:
                raise RegistryError(f"{uri}: {_short(exc)}") from None
            return ResolvedModel(uri, mv.source, name, str(mv.version), _version_digest(uri, mv), dict(mv.tags),
                                 mv.tags.get("weights_sha256"))
        if uri.startswith("runs:/"):
            return ResolvedModel(uri, uri, sha256=self._registered_digest(uri))
        if Path(uri).is_dir():
            return ResolvedModel(uri, uri, sha256=_pulled_digest(uri))
        if uri.startswith("models:/"):
            raise RegistryError(f"{uri!r} is not a model URI; expected models:/NAME/VERSION or models:/NAME@ALIAS")
        raise RegistryError(f"{uri!r}: no such directory; expected a policy directory, "
                            "models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/policy")

    def _registered_digest(self, uri: str) -> str:
        """The ``content_sha256`` tag of a registered version made from the ``runs:/ID/PATH`` files: a run's files
        carry no digest the artifact store could not rewrite with them (training records none on the run), the
        version registered from them does. No such version, or a failed lookup, is refused: never loaded on the
        manifest's own digest, which only says the files agree with themselves."""
        run_id, _, path = uri[len("runs:/"):].partition("/")
        if not RUN_ID.match(run_id) or not path:
            raise RegistryError(f"{uri!r} is not a run URI; expected runs:/RUN_ID/PATH")
        try:
            versions = self.client.search_model_versions(f"run_id = '{run_id}'")
        except MlflowException as exc:  # chained: the CLI names the server that failed (registry_errors.explain)
            raise RegistryError(f"{uri}: the registered version of these files cannot be looked up, so they cannot "
                                f"be verified: {_short(exc)}") from exc
        matching = [mv for mv in versions if mv.source.rstrip("/").endswith("/" + path.strip("/"))]
        for mv in matching:
            if mv.tags.get("content_sha256"):
                return mv.tags["content_sha256"]
        if matching:
            return _version_digest(uri, matching[0])  # registered, untagged: refused
        raise RegistryError(f"{uri}: no registered version was made from these files, so nothing vouches for them "
                            "(the manifest's own digest only says they agree with themselves); register them "
                            "(`fleet train` does, or Registry.publish) and use models:/NAME/VERSION, moving the alias "
                            "to it with `fleet promote`")

    def download(self, resolved: ResolvedModel, dst: str | Path | None = None) -> Path:
        if Path(resolved.source).is_dir():
            return Path(resolved.source)
        dst = Path(dst or tempfile.mkdtemp(prefix="metafleet-pull-"))
        mlflow.set_tracking_uri(self.uri)
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=resolved.source, dst_path=str(dst)))

    def load(self, uri: str) -> PolicyArtifact:
        """Resolve, download and verify (the content digest, mandatory, and the version's digest tags)."""
        resolved = self.resolve(uri)
        return PolicyArtifact.load(self.download(resolved), expected_digest=resolved.sha256,
                                   expected_weights_sha256=resolved.weights_sha256)


def _version_digest(uri: str, mv) -> str:
    """The ``content_sha256`` tag of a registered version; a version without one is refused, not loaded on the
    manifest's own digest (which only says the files agree with themselves)."""
    digest = mv.tags.get("content_sha256")
    if not digest:
        raise RegistryError(f"{uri}: registered version {mv.name}/{mv.version} has no content_sha256 tag, so it is "
                            "not a verified version (the registry's digest is what vouches for the files); re-publish "
                            "the policy (`fleet train`, or Registry.publish, tags it) and move the alias to the new "
                            "version with `fleet promote`")
    return digest


def _pulled_digest(directory: str) -> str | None:
    """For a directory `fleet pull` made (in its store, or a copy holding pull.json): the digest its pull.json
    records, after checking the directory against it; None for any other directory."""
    digest = recorded_digest(directory)
    if digest is not None:
        PolicyArtifact.load(directory, expected_digest=digest, expected_from=PULL_RECORD)
    return digest


def _short(exc: MlflowException) -> str:
    return str(exc.message if hasattr(exc, "message") else exc).splitlines()[0]
