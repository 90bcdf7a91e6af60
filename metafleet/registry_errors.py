"""What every registry command shares: bounded waits on the registry, and one clean message when it fails.

``registry_command(handler)`` wraps adapt, eval, promote, pull, history, rollback and status. Before the command
runs it bounds every MLflow HTTP call the way the Tracker does (``learner.tracking.HTTP_LIMITS``: 20 s a request, 2
retries, backoff factor 1 -- at most about a minute per call, where MLflow's own defaults wait 120 s x 7
retries; values already set in the environment win). A registry that does not answer, refuses the credentials
or fails then exits 2 with ``fleet: error: registry URI ...`` naming the server (never its password) and the
HTTP status, instead of a traceback.
"""

from __future__ import annotations

import functools
import os

from metafleet.args import EXIT_FAILED, bad_input, error

AUTH_HELP = ("check MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) for this "
             "server")


def registry_command(handler):
    """``handler(args) -> int`` with bounded registry waits and registry failures as exit 2 (a recorded move
    whose alias did not follow: exit 1, with the command that finishes it)."""

    @functools.wraps(handler)
    def run(args) -> int:
        from mlflow.exceptions import MlflowException

        from deploy.history import HistoryError, HistoryWriteError
        from learner.tracking import bound_http_waits

        bound_http_waits()
        try:
            return handler(args)
        except MlflowException as exc:
            return bad_input(registry_message(exc))
        except HistoryError as exc:
            return bad_input(str(exc))
        except HistoryWriteError as exc:
            return error(str(exc), EXIT_FAILED)
    return run


def server_failure(exc: BaseException):
    """The MLflow failure behind ``exc`` (itself, or what it was raised from or during) when it is the server's
    (no answer, refused credentials, an error status), not an answer such as "no such model"; else None."""
    from mlflow.exceptions import MlflowException

    from deploy.history import not_found

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, MlflowException):
            return None if not_found(seen) else seen
        seen = seen.__cause__ or seen.__context__
    return None


def explain(exc: BaseException) -> str:
    """The message for a refused registry lookup: the server's failure behind it, if that is what it was."""
    failure = server_failure(exc)
    return registry_message(failure) if failure is not None else str(exc)


def registry_message(exc) -> str:
    """One line for an MLflow failure: the server (without credentials), what happened, what to check."""
    from learner.tracking import public_uri, resolve_tracking_uri

    server, text = public_uri(resolve_tracking_uri()), str(getattr(exc, "message", exc)).splitlines()[0]
    if "timed out" in text.lower() or "timeout" in text.lower():
        timeout = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "?")
        retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "?")
        return (f"registry {server} did not answer within {timeout} s ({retries} retries; MLFLOW_HTTP_REQUEST_TIMEOUT "
                "and MLFLOW_HTTP_REQUEST_MAX_RETRIES set the bound): is the tracking server up?")
    status = _http_status(exc, text)
    if status in (401, 403):
        return f"registry {server} refused the request: HTTP {status}; {AUTH_HELP}"
    if status is not None:
        return f"registry {server} failed the request: HTTP {status}: {text}"
    return f"registry {server} cannot be used: {text}"


def _http_status(exc, text: str) -> int | None:
    """The HTTP status of a REST failure, where the server answered one (not for failures to connect)."""
    if "error code" not in text and type(exc).__name__ != "RestException":
        return None
    try:
        return int(exc.get_http_status_code())
    except (AttributeError, TypeError, ValueError):
        return None


