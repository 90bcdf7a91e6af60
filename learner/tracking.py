"""MLflow tracking for one training job: the run, its params, metrics and artifacts.

With nothing set, tracking and registry live in `sqlite:///mlflow.db` in the working directory.

Training must not stop because the tracking server blinks: metrics (and checkpoint artifacts) that MLflow
refuses are kept in a bounded buffer and delivered by a later call or at `close()`; see `Tracker`.

Every checkpoint logged into the run also gets its sha256 as the run tag ``checkpoint_sha256/<file name>``;
a resume (:func:`find_checkpoint`) loads only a checkpoint that matches it.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import tempfile
import time
import urllib.parse
from collections import deque
from pathlib import Path

import mlflow
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from learner.checkpoint import LoadedCheckpoint, file_sha256, load_newest

log = logging.getLogger(__name__)
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MAX_BUFFERED_POINTS = 100_000  # ~10 MB of Metric objects; the oldest points go first when full
RETRY_INTERVAL_S = 5.0  # during an outage, a logging call tries to flush at most this often
BATCH_SIZE = 1000  # MLflow's limit of metrics per log_batch call
REJECTED = {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_DOES_NOT_EXIST"}  # permanent: not retried
# MLflow's own HTTP defaults (7 retries, backoff factor 2, 120 s timeout) can block one call for minutes.
# The Tracker sets these unless the environment already does (os.environ.setdefault).
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
_BAD_METRIC_CHARS = re.compile(r"[^\w\-./ :]")
CHECKPOINTS = "checkpoints"  # the artifact path of checkpoints in the run
DIGEST_TAG = "checkpoint_sha256/"  # + file name: the sha256 of a checkpoint, taken when it is logged


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


def bound_http_waits() -> None:
    """Cap how long one MLflow HTTP call may block (user-set values win)."""
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)


class Tracker:
    """One MLflow run per job; `run_id` reopens an existing run (resume).

    Metric points and artifacts logged during training survive a tracking outage: a failed delivery keeps
    them (metrics: up to `max_buffered` points, oldest dropped first and counted in `dropped`) and they are
    retried by the next call (at most every `retry_interval` seconds) and by `flush()` / `close()`. One
    warning per outage. Points keep their original timestamps, so a retried batch is idempotent.

    >>> tracker = Tracker(uri, "metafleet", run_name="reach-maml")
    >>> tracker.log_metrics({"return": 1.0}, step=0); tracker.close()
    """

    def __init__(self, uri: str, experiment: str, run_id: str | None = None, run_name: str | None = None,
                 max_buffered: int = MAX_BUFFERED_POINTS, retry_interval: float = RETRY_INTERVAL_S):
        bound_http_waits()
        self.uri = uri
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        self.client = MlflowClient(uri, uri)
        if run_id is None:
            mlflow.set_experiment(experiment)
        self.run = mlflow.start_run(run_id=run_id, run_name=run_name, log_system_metrics=True)
        self.run_id = self.run.info.run_id
        self.max_buffered, self.retry_interval = max_buffered, retry_interval
        self.buffered = 0  # points that could not be delivered at once and waited in the buffer
        self.dropped = 0  # points lost because the buffer was full
        self.flush_failures = 0  # delivery attempts that failed
        self._pending: deque[Metric] = deque()
        self._pending_artifacts: list[tuple[str, str | None]] = []
        self._pending_tags: dict[str, str] = {}  # checkpoint digests, delivered before their files
        self._outage_since: float | None = None
        self._next_retry = 0.0
        self._already_logged: dict[str, set[int]] = {}

    @property
    def pending(self) -> int:
        """Metric points waiting for delivery."""
        return len(self._pending)

    def log_params(self, params: dict) -> None:
        existing = self.client.get_run(self.run_id).data.params
        fresh = {k: str(v)[:6000] for k, v in params.items() if k not in existing}
        if fresh:
            mlflow.log_params(fresh)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log (or buffer) one step's metrics; never raises because MLflow is unreachable."""
        now = int(time.time() * 1000)
        points = [Metric(metric_key(k), float(v), now, step) for k, v in metrics.items()]
        points = [p for p in points if p.step not in self._already_logged.get(p.key, ())]
        self._enqueue(points)
        if not self.flush(force=False):
            self.buffered += len(points)

    def mark_resumed(self, iteration: int) -> None:
        """Resuming at `iteration`: the killed job may have logged steps >= iteration that will be re-done.
        MLflow cannot delete points, so the first write wins: re-done (key, step) points are not logged
        again. The resume itself is recorded as tag and metric `resumed_from_iteration`."""
        for key in self.client.get_run(self.run_id).data.metrics:
            if key.startswith("system/"):
                continue
            steps = {m.step for m in self.client.get_metric_history(self.run_id, key) if m.step >= iteration}
            if steps:
                self._already_logged[key] = steps
        self.set_tags({"resumed_from_iteration": str(iteration)})
        self._enqueue([Metric("resumed_from_iteration", float(iteration), int(time.time() * 1000), iteration)])
        self.flush(force=False)

    def flush(self, force: bool = True) -> bool:
        """Deliver buffered metrics and artifacts; True when nothing is left waiting. Without `force`,
        an outage is retried at most every `retry_interval` seconds."""
        if not self._pending and not self._pending_artifacts and not self._pending_tags:
            return True
        if not force and time.monotonic() < self._next_retry:
            return False
        try:
            while self._pending:
                chunk = [self._pending[i] for i in range(min(BATCH_SIZE, len(self._pending)))]
                self.client.log_batch(self.run_id, metrics=chunk)
                for _ in chunk:
                    self._pending.popleft()
            if self._pending_tags:
                self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in self._pending_tags.items()])
                self._pending_tags.clear()
            while self._pending_artifacts:
                path, artifact_path = self._pending_artifacts[0]
                if Path(path).exists():  # a rotated-away checkpoint is no loss: a newer one follows
                    self.client.log_artifact(self.run_id, path, artifact_path)
                self._pending_artifacts.pop(0)
        except MlflowException as exc:
            if exc.error_code in REJECTED:  # the data is bad, not the connection: retrying cannot help
                self._drop_rejected(exc)
                raise
            self._delivery_failed(exc)
            return False
        except Exception as exc:
            self._delivery_failed(exc)
            return False
        if self._outage_since is not None:
            log.warning("MLflow reachable again after %.0f s; buffered metrics delivered (%d dropped so far)",
                        time.monotonic() - self._outage_since, self.dropped)
            self._outage_since = None
        return True

    def _enqueue(self, points: list[Metric]) -> None:
        for point in points:
            if len(self._pending) >= self.max_buffered:
                self._pending.popleft()
                self.dropped += 1
            self._pending.append(point)

    def _drop_rejected(self, exc: MlflowException) -> None:
        """MLflow refused the oldest batch itself: drop it (counted) so later points are not stuck behind it."""
        if self._pending:
            for _ in range(min(BATCH_SIZE, len(self._pending))):
                self._pending.popleft()
                self.dropped += 1
        elif self._pending_tags:
            self._pending_tags.clear()
        elif self._pending_artifacts:
            self._pending_artifacts.pop(0)
        log.error("MLflow rejected buffered data (%s); dropped it", exc.error_code)

    def _delivery_failed(self, exc: Exception) -> None:
        self.flush_failures += 1
        self._next_retry = time.monotonic() + self.retry_interval
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning("MLflow at %s is unreachable (%s: %s); training goes on, metrics are buffered (up to %d "
                        "points) and retried every %.0f s", self.uri, type(exc).__name__, str(exc)[:200],
                        self.max_buffered, self.retry_interval)

    def log_text(self, text: str, artifact_file: str) -> None:
        mlflow.log_text(text, artifact_file)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        mlflow.log_dict(data, artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        mlflow.log_figure(figure, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload one file (checkpoints during training); kept for a later retry when MLflow is down. A checkpoint
        (``artifact_path`` "checkpoints") also gets its sha256 recorded as a run tag, what a resume checks."""
        if artifact_path == CHECKPOINTS:  # hashed now, as written: the tag must not follow later changes
            self._pending_tags[DIGEST_TAG + Path(path).name] = file_sha256(path)
        entry = (str(path), artifact_path)
        if entry not in self._pending_artifacts:
            self._pending_artifacts.append(entry)
        self.flush(force=False)

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
        """Deliver what is buffered, then end the run (raises if MLflow is still unreachable)."""
        if not self.flush():
            log.error("MLflow still unreachable at close: %d metric points, %d artifacts and %d checkpoint digests "
                      "not delivered", len(self._pending), len(self._pending_artifacts), len(self._pending_tags))
        if mlflow.active_run() is not None:
            mlflow.end_run(status=status)


def checkpoint_digests(client: MlflowClient, run_id: str) -> dict[str, str]:
    """Checkpoint file name -> the sha256 the run recorded when it was logged (empty for an unknown run)."""
    try:
        tags = client.get_run(run_id).data.tags
    except MlflowException:
        return {}
    return {key[len(DIGEST_TAG):]: value for key, value in tags.items() if key.startswith(DIGEST_TAG)}


def find_checkpoint(uri: str, run_id: str, local_dir: Path) -> LoadedCheckpoint | None:
    """The newest checkpoint of run ``run_id`` that matches the sha256 the run recorded for it: from
    ``local_dir``, else from the run's MLflow copy. Reads only; raises
    :class:`learner.checkpoint.CheckpointIntegrityError` for a changed or unverifiable checkpoint."""
    client = MlflowClient(uri, uri)
    digests, where = checkpoint_digests(client, run_id), f"MLflow run {run_id}"
    found = load_newest(local_dir, digests, where)
    if found is None:
        try:
            remote = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=CHECKPOINTS,
                                                         dst_path=tempfile.mkdtemp(), tracking_uri=uri)
        except Exception:  # no checkpoint was ever logged
            return None
        found = load_newest(remote, digests, where)
    return found


def public_uri(uri: str) -> str:
    """``uri`` without a user name or password in it (``http://user:pw@host`` -> ``http://host``)."""
    parts = urllib.parse.urlsplit(uri)
    if not parts.hostname or "@" not in parts.netloc:
        return uri
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
