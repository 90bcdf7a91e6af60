"""Robot telemetry to MLflow: the spool's episode records (:mod:`deploy.telemetry_spool`) delivered exactly once.

One MLflow run per (robot, model, version) under the experiment ``fleet``, tagged ``robot``, ``model``,
``version``, ``digest`` (the UI filters on them: ``tags.robot = 'kuka-0'``); each episode's figures are metrics at
step = the record's ``index``. Delivery is batched (``log_batch``, whole records per call) with short bounded
waits: telemetry must never hold a robot up. Exactly once: the spool's delivered offset moves only after a batch
succeeded, and before sending, the steps the run already holds are left out (a batch that landed but whose
offset was not written, e.g. a kill in between, is not sent twice).
"""

from __future__ import annotations

import os
import socket
import time
import urllib.parse

from deploy.telemetry_spool import Spool

EXPERIMENT = "fleet"
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
RECORDS_PER_BATCH = 100  # x 9 metrics, under MLflow's 1000 per log_batch
CONNECT_TIMEOUT_S = 2.0
METRICS = ("return", "success", "length", "interventions", "safe_stops", "clipped", "rate_limited",
           "latency_p50_ms", "latency_p99_ms")


def bound_telemetry_waits() -> None:
    """Cap one MLflow HTTP call at 5 s, no retries (the spool is the retry; user-set values win)."""
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)


def tracking_uri() -> str:
    from learner.tracking import resolve_tracking_uri

    return resolve_tracking_uri()


def reachable(uri: str) -> bool:
    """A quick TCP connect to an http(s) tracking server (other stores: True); no MLflow wait when it is down."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return True
    try:
        with socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)),
                                      timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def metrics_of(record: dict) -> dict[str, float]:
    out = {"return": record["return"], "length": record["length"], "safe_stops": record["safe_stops"],
           "clipped": record["clipped"], "rate_limited": record["rate_limited"],
           "interventions": record["safe_stops"] + record["clipped"] + record["rate_limited"],
           "latency_p50_ms": record["latency_p50_ms"], "latency_p99_ms": record["latency_p99_ms"]}
    if record.get("success") is not None:
        out["success"] = float(record["success"])
    return {k: float(v) for k, v in out.items()}


class Delivery:
    """Flushes a spool to MLflow. ``flush()`` returns the records delivered; raises on a tracking failure
    (callers that must not fail catch ``Exception``)."""

    def __init__(self, spool: Spool, uri: str | None = None):
        bound_telemetry_waits()
        self.spool, self.uri = spool, uri or tracking_uri()
        self._client = None
        self._runs: dict[tuple, str] = {}

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.uri)
        return self._client

    def _experiment_id(self) -> str:
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        if experiment is not None:
            return experiment.experiment_id
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(EXPERIMENT)
        except MlflowException:  # another robot created it meanwhile
            return self.client.get_experiment_by_name(EXPERIMENT).experiment_id

    def run_id(self, record: dict) -> str:
        key = (record["robot"], record["model"], record["version"], record["digest"])
        if key not in self._runs:
            experiment = self._experiment_id()
            found = self.client.search_runs(
                [experiment], filter_string=" and ".join(f"tags.{k} = '{_quote(v)}'" for k, v in
                                                         zip(("robot", "model", "version", "digest"), key)),
                max_results=1, order_by=["attributes.start_time ASC"])
            if found:
                self._runs[key] = found[0].info.run_id
            else:
                run = self.client.create_run(experiment, run_name=f"{key[0]} {key[1]} v{key[2]}",
                                             tags={"robot": key[0], "model": key[1], "version": key[2],
                                                   "digest": key[3], "family": record.get("family") or ""})
                self._runs[key] = run.info.run_id
        return self._runs[key]

    def flush(self) -> int:
        if not reachable(self.uri):
            from learner.tracking import public_uri  # only on this error path: `fleet run` stays light

            raise ConnectionError(f"tracking server {public_uri(self.uri)} does not accept connections")
        from mlflow.entities import Metric

        pending = self.spool.pending()
        delivered = 0
        for start in range(0, len(pending.entries), RECORDS_PER_BATCH):
            chunk = pending.entries[start:start + RECORDS_PER_BATCH]
            by_run: dict[str, list[dict]] = {}
            for entry in chunk:
                by_run.setdefault(self.run_id(entry["record"]), []).append(entry["record"])
            for run_id, records in by_run.items():
                held = {m.step for m in self.client.get_metric_history(run_id, "length")}
                metrics = [Metric(key, value, int(1000 * r["time"]), r["index"])
                           for r in records if r["index"] not in held for key, value in metrics_of(r).items()]
                if metrics:
                    self.client.log_batch(run_id, metrics=metrics, synchronous=True)
                delivered += sum(r["index"] not in held for r in records)
            self.spool.mark_delivered(chunk[-1]["end"])
        if pending.end > self.spool.delivered():  # only skipped lines after the last record
            self.spool.mark_delivered(pending.end)
        return delivered


class Reporter:
    """What `fleet run` uses: append every episode to the spool, flush now and then, never raise, warn once."""

    def __init__(self, spool: Spool, uri: str | None = None, flush_every_s: float = 5.0, retry_after_s: float = 60.0,
                 warn=print):
        self.spool, self.warn = spool, warn
        self.delivery = Delivery(spool, uri)
        self.flush_every_s, self.retry_after_s = flush_every_s, retry_after_s  # after a failure: wait longer
        self.delivered = self.failures = 0  # failures: in a row
        self.warned: set[str] = set()
        self._last = 0.0

    def _warn_once(self, what: str, text: str) -> None:
        if what not in self.warned:
            self.warned.add(what)
            self.warn(text)

    def record(self, record: dict) -> None:
        try:
            if self.spool.append(record) is None:
                self._warn_once("invalid", "telemetry: an episode record failed validation and was skipped "
                                           "(counted in the spool's rejected records)")
        except OSError as exc:
            self._warn_once("spool", f"telemetry: cannot write the spool {self.spool.path}: {exc}; episodes "
                                     "are not recorded")
            return
        if time.monotonic() - self._last >= (self.retry_after_s if self.failures else self.flush_every_s):
            self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        try:
            self.delivered += self.delivery.flush()
            self.failures = 0
        except Exception as exc:  # tracking down, refused, anything: the spool keeps the records
            self.failures += 1
            from learner.tracking import public_uri

            self._warn_once("tracking", f"telemetry: tracking server {public_uri(self.delivery.uri)} not reachable "
                                        f"({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}); "
                                        f"episodes stay in {self.spool.directory} until it is")

    def summary(self) -> dict:
        pending = self.spool.pending()
        return {"spool": str(self.spool.directory), "delivered": self.delivered, "pending": len(pending.entries),
                "skipped_lines": pending.skipped, "rejected": self.spool.rejected}


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")




# ------------------------------------------------------------------------------------------- reading back
def _mean_stderr(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, (var / len(values)) ** 0.5


def robot_figures(client, models: list[str] | None = None, window_s: float = 3600.0,
                  now: float | None = None) -> list[dict]:
    """Per (robot, model, version) run of the ``fleet`` experiment: the episodes reported in the last
    ``window_s`` seconds, their success and return (mean, stderr), interventions, and when it last reported.
    ``models``: only these (None: all)."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    now = time.time() if now is None else now
    since_ms = 1000 * (now - window_s)
    rows = []
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        tags = run.data.tags
        if "robot" not in tags or (models is not None and tags.get("model") not in models):
            continue
        history = {key: client.get_metric_history(run.info.run_id, key)
                   for key in ("length", "return", "success", "interventions")}
        recent = {key: [m.value for m in points if m.timestamp >= since_ms] for key, points in history.items()}
        last = max((m.timestamp for m in history["length"]), default=None)
        success, success_se = _mean_stderr(recent["success"])
        ret, ret_se = _mean_stderr(recent["return"])
        rows.append({"robot": tags["robot"], "model": tags.get("model"), "version": tags.get("version"),
                     "digest": tags.get("digest"), "run_id": run.info.run_id, "episodes": len(history["length"]),
                     "episodes_1h": len(recent["length"]), "success": success, "success_stderr": success_se,
                     "return": ret, "return_stderr": ret_se, "interventions": int(sum(recent["interventions"])),
                     "last_seen": None if last is None else time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                           time.gmtime(last / 1000))})
    return sorted(rows, key=lambda r: (r["model"] or "", r["robot"], r["version"] or ""))
