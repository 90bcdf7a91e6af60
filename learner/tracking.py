"""MLflow tracking for one training job: the run, its params, metrics and artifacts.

With nothing set, tracking and registry live in `sqlite:///mlflow.db` in the working directory.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import tempfile
import urllib.parse
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
_BAD_METRIC_CHARS = re.compile(r"[^\w\-./ :]")


class TrackingError(RuntimeError):
    """MLflow cannot be used at the configured URI."""


def resolve_tracking_uri(configured: str | None = None) -> str:
    """Config value, else MLFLOW_TRACKING_URI, else the embedded sqlite default."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def check_tracking_uri(uri: str, timeout: float = 3.0) -> None:
    """Fail fast (before any worker starts) if the tracking store is unusable."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "sqlite":
        path = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
        if path is not None and not path.parent.resolve().is_dir():
            raise TrackingError(f"MLflow URI {uri!r}: directory {str(path.parent)!r} does not exist")
        return
    if parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            with socket.create_connection((parsed.hostname, port), timeout=timeout):
                pass
        except OSError as exc:
            raise TrackingError(
                f"MLflow tracking server {uri!r} is unreachable ({exc}); start it, or unset "
                f"MLFLOW_TRACKING_URI to use the embedded {DEFAULT_TRACKING_URI}"
            ) from None
        return
    if parsed.scheme in ("", "file"):
        return
    if parsed.scheme not in ("databricks", "postgresql", "mysql", "mssql"):
        raise TrackingError(f"MLflow URI {uri!r}: unsupported scheme {parsed.scheme!r}")


def metric_key(name: str) -> str:
    return _BAD_METRIC_CHARS.sub("_", name)


class Tracker:
    """One MLflow run per job; `run_id` reopens an existing run (resume).

    >>> tracker = Tracker(uri, "metafleet", run_name="reach-maml")
    >>> tracker.log_metrics({"return": 1.0}, step=0); tracker.close()
    """

    def __init__(self, uri: str, experiment: str, run_id: str | None = None, run_name: str | None = None):
        self.uri = uri
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        self.client = MlflowClient(uri, uri)
        if run_id is None:
            mlflow.set_experiment(experiment)
        self.run = mlflow.start_run(run_id=run_id, run_name=run_name, log_system_metrics=True)
        self.run_id = self.run.info.run_id

    def log_params(self, params: dict) -> None:
        existing = self.client.get_run(self.run_id).data.params
        fresh = {k: str(v)[:6000] for k, v in params.items() if k not in existing}
        if fresh:
            mlflow.log_params(fresh)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        clean = {metric_key(k): float(v) for k, v in metrics.items()}
        mlflow.log_metrics(clean, step=step)

    def log_text(self, text: str, artifact_file: str) -> None:
        mlflow.log_text(text, artifact_file)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        mlflow.log_dict(data, artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        mlflow.log_figure(figure, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path)

    def log_artifacts(self, directory: str | Path, artifact_path: str) -> None:
        mlflow.log_artifacts(str(directory), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        mlflow.set_tags(tags)

    def artifact_uri(self, path: str = "") -> str:
        return mlflow.get_artifact_uri(path)

    def download(self, artifact_path: str) -> Path | None:
        """Download one of this run's artifacts to a temp dir (None when it does not exist)."""
        try:
            return Path(
                mlflow.artifacts.download_artifacts(
                    run_id=self.run_id, artifact_path=artifact_path, dst_path=tempfile.mkdtemp()
                )
            )
        except Exception:
            return None

    def close(self, status: str = "FINISHED") -> None:
        if mlflow.active_run() is not None:
            mlflow.end_run(status=status)
