"""Fleet history: every alias move (candidate, production, robot-<id>) made and recorded in one place.

    move_alias(client, "reach-maml-adapted", "robot-kuka-7", "4", reason=..., gate="adapt", passed=True,
               figures={"return_before": -3.1, "return_after": -1.2}, command="fleet adapt ...")

The record lives in the MLflow registry itself, beside the alias: one registered-model tag per move,
``fleet.history.<time_ns:020d>.<8 hex>`` -> one strict JSON object, signed with ``METAFLEET_HISTORY_KEY`` when
one is configured (``deploy/history_record.py``: the format, the signature, the strict reader; nothing is ever
executed). Any ``MlflowClient`` reads it (``client.get_registered_model(name).tags``); the tag keys sort oldest
first. A move is: read the alias's holder, write the record, then set the alias -- never an alias move the
history does not explain. A failure between the two writes leaves a record the alias has not followed (a
*pending* move): running the same move again finishes it without a second record, and until then the pending
record counts for nothing (not for a rollback, not in `fleet status`).

Rollback (``rollback``) moves an alias back to the newest version it pointed to earlier whose move passed
its gate (``passed`` true, or null where the alias has no gate, e.g. ``candidate`` = newest), skipping the
current holder, versions rolled back from (until a gate passes them again) and deleted versions; ``verify``
checks the target's files (`fleet rollback` verifies them as `fleet pull` does) before the alias moves.
"""

from __future__ import annotations

import getpass
import math
import os
import socket
from collections.abc import Callable
from datetime import datetime, timezone

from mlflow.exceptions import MlflowException

from deploy.history_record import (
    FORMAT,
    MAX_TEXT,
    PREFIX,
    AliasMove,
    HistoryError,
    clean_figures,
    encode,
    history_key,
    parse,
)

USER_ENV = "METAFLEET_USER"
ROLLBACK = "rollback"
NOT_FOUND = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}  # the registry's answer "no such thing"


class HistoryWriteError(RuntimeError):
    """A move whose record was written but whose alias did not move: the same command again finishes it."""


def not_found(exc: MlflowException) -> bool:
    """The registry answered that the model, version or alias does not exist (anything else -- no answer,
    refused credentials -- is not an answer about the model and must not be reported as one)."""
    return str(exc.error_code) in NOT_FOUND


def current_user() -> str:
    """$METAFLEET_USER, else the login name, else "unknown" (containers often have no passwd entry)."""
    if os.environ.get(USER_ENV):
        return os.environ[USER_ENV]
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):
        return "unknown"


def robot_alias(robot_id: str) -> str:
    return f"robot-{robot_id}"


# ------------------------------------------------------------------------------------------------ write
def move_alias(client, model: str, alias: str, version: str, *, reason: str, gate: str, passed: bool | None,
               figures: dict | None = None, command: str = "") -> AliasMove:
    """Record who/when/why in the registry, then point ``models:/model@alias`` at ``version``.

    ``gate``: what decided (``train``, ``promote``, ``adapt``, ``rollback``); ``passed``: whether the version
    passed that gate (None: the alias has no gate); ``figures``: the gate's numbers (flat: str -> number,
    string, bool or None; non-finite numbers are recorded as null). Idempotent: when the alias's last record
    is this very move, pending, the alias is moved and that record returned (nothing new is recorded).
    HistoryWriteError: recorded, but the alias did not move."""
    version = str(version)
    previous = alias_holder(client, model, alias)
    records, _ = read_history(client, model)
    pending = pending_move([r for r in records if r.alias == alias], previous)
    if pending is not None and pending.to_version == version:
        _set_alias(client, model, alias, version, pending.key)
        return pending
    record = {"format": FORMAT, "model": model, "alias": alias, "from_version": previous, "to_version": version,
              "who": current_user(), "host": socket.gethostname(),
              "when": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
              "why": {"reason": str(reason)[:MAX_TEXT], "gate": str(gate), "passed": passed,
                      "figures": clean_figures(figures or {})},
              "command": str(command)[:MAX_TEXT]}
    secret = history_key()
    key, text = encode(record, secret)
    client.set_registered_model_tag(model, key, text)  # the record first: a failure here changes nothing
    _set_alias(client, model, alias, version, key)
    return parse(key, text, len(records) + 1, secret)


def _set_alias(client, model: str, alias: str, version: str, key: str) -> None:
    try:
        client.set_registered_model_alias(model, alias, version)
    except MlflowException as exc:
        raise HistoryWriteError(f"the move of models:/{model}@{alias} to v{version} is recorded (tag {key}) but the "
                                f"alias did not move: {exc}; run the same command again to finish it") from None


def pending_move(moves: list[AliasMove], holder: str | None) -> AliasMove | None:
    """The alias's last recorded move if the alias has not followed it (recorded, then the move failed)."""
    last = moves[-1] if moves else None
    return last if last is not None and last.from_version == holder and last.to_version != holder else None


# ------------------------------------------------------------------------------------------------ read
def require_model(client, model: str):
    """The registered model, or HistoryError naming it (MlflowException when the registry did not answer)."""
    try:
        return client.get_registered_model(model)
    except MlflowException as exc:
        if not not_found(exc):
            raise
        raise HistoryError(f"no registered model {model!r} in the registry") from None


def alias_holder(client, model: str, alias: str) -> str | None:
    """The version ``models:/model@alias`` points at, or None."""
    try:
        return str(client.get_model_version_by_alias(model, alias).version)
    except MlflowException as exc:
        if not not_found(exc):
            raise
        return None


def read_history(client, model: str, alias: str | None = None) -> tuple[list[AliasMove], list[str]]:
    """The model's recorded moves, oldest first (of ``alias`` only, if given), and one line per tag under the
    history prefix that is not a valid record -- or, with a history key configured, not signed with it (such
    tags are reported, never trusted)."""
    tags = require_model(client, model).tags
    secret = history_key()
    records, problems = [], []
    for key in sorted(k for k in tags if k.startswith(PREFIX)):
        try:
            record = parse(key, tags[key], len(records) + 1, secret)
        except ValueError as exc:
            problems.append(f"tag {key!r} of {model!r} is not a valid history record ({exc}); ignored")
            continue
        if record.model != model:
            problems.append(f"tag {key!r} of {model!r} records a move of {record.model!r}; ignored")
            continue
        records.append(record)
    return [r for r in records if alias is None or r.alias == alias], problems


# ------------------------------------------------------------------------------------------------ rollback
def settled(records: list[AliasMove], current: str | None) -> list[AliasMove]:
    """One alias's moves that took effect: without a record after which the alias stayed where that record
    started (the next move starts there too, or, for the last, the alias is still there): a pending move."""
    kept = []
    for i, record in enumerate(records):
        after = records[i + 1].from_version if i + 1 < len(records) else current
        if record.from_version is not None and after == record.from_version != record.to_version:
            continue
        kept.append(record)
    return kept


def rollback_target(records: list[AliasMove], current: str | None, exists=lambda version: True) -> AliasMove | None:
    """The record of the version to roll ``current`` back to: the newest earlier holder of the alias that is
    still good (its last move passed its gate and no rollback moved away from it since), not ``current``,
    and that still ``exists``. ``records`` are one alias's moves, oldest first; pending ones do not count."""
    records = settled(records, current)
    good: dict[str, bool] = {}
    for record in records:
        if record.gate == ROLLBACK and record.from_version is not None:
            good[record.from_version] = False
        good[record.to_version] = record.good
    for record in reversed(records):
        version = record.to_version
        if version != current and good.get(version) and exists(version):
            gated = [r for r in records if r.to_version == version and r.gate != ROLLBACK]
            return gated[-1] if gated else record
    return None


def rollback(client, model: str, alias: str, reason: str = "", command: str = "",
             verify: Callable[[str], object] | None = None) -> tuple[AliasMove, AliasMove]:
    """Move ``models:/model@alias`` back to its previous good version; (the new move, the restored version's
    gate record). ``verify(version)`` runs before anything is written and raises to refuse the target.
    HistoryError: unknown model, alias not set, or no earlier good version. Run again after a failure between
    the record and the alias move, it finishes that rollback (one record) instead of rolling back further."""
    require_model(client, model)
    current = alias_holder(client, model, alias)
    if current is None:
        raise HistoryError(f"models:/{model}@{alias} is not set: nothing to roll back"
                           + adapted_hint(client, model, alias))
    records, _ = read_history(client, model, alias)

    def exists(version: str) -> bool:
        try:
            client.get_model_version(model, version)
            return True
        except MlflowException as exc:
            if not not_found(exc):
                raise
            return False

    target = rollback_target(records, current, exists)
    if target is None:
        earlier = sorted({r.to_version for r in records} - {current}, key=int)
        raise HistoryError(f"nothing to roll back to: models:/{model}@{alias} is on v{current} and "
                           + (f"no earlier version it held (v{', v'.join(earlier)}) passed its gate without being "
                              "rolled back since" if earlier else "the history records no earlier version of it"))
    if verify is not None:
        verify(target.to_version)
    text = f"rollback from v{current} to v{target.to_version} (passed its {target.gate} gate {target.when})"
    move = move_alias(client, model, alias, target.to_version, reason=f"{text}: {reason}" if reason else text,
                      gate=ROLLBACK, passed=target.passed, figures=target.figures, command=command)
    return move, target


def adapted_hint(client, model: str, alias: str) -> str:
    """For `fleet rollback reach-maml --robot X`: robot aliases live on reach-maml-adapted."""
    if not alias.startswith("robot-") or model.endswith("-adapted"):
        return ""
    try:
        client.get_registered_model(f"{model}-adapted")
    except MlflowException as exc:
        if not not_found(exc):
            raise
        return ""
    return f" (robot aliases are set on {model + '-adapted'!r}, the adapted versions of {model!r})"


# ------------------------------------------------------------------------------------------------ status
def fleet_status(client, models: list[str]) -> list[dict]:
    """One row per alias of each model: the version it is on, the parent meta-policy and adaptation gain
    (version tags), and its last recorded move (``recorded`` false: the alias moved outside this history;
    ``pending``: the version a recorded move the alias has not followed yet was to set)."""
    rows = []
    for model in models:
        registered = require_model(client, model)
        records, _ = read_history(client, model)
        for alias, version in sorted(registered.aliases.items()):
            version = str(version)
            tags = dict(client.get_model_version(model, version).tags)
            moves = [r for r in records if r.alias == alias]
            pending, applied = pending_move(moves, version), settled(moves, version)
            last = applied[-1] if applied and applied[-1].to_version == version else None
            before, after = _number(tags.get("return_before")), _number(tags.get("return_after"))
            parent = f"{tags['parent_model']}/{tags['parent_version']}" if tags.get("parent_model") else None
            rows.append({"model": model, "alias": alias, "robot": alias[6:] if alias.startswith("robot-") else None,
                         "version": version, "parent": parent,
                         "gain": None if before is None or after is None else after - before,
                         "return_before": before, "return_after": after, "recorded": last is not None,
                         "moved": last.when if last else None, "by": last.who if last else None,
                         "why": last.reason if last else None, "gate": last.gate if last else None,
                         "pending": pending.to_version if pending else None})
    return rows


def _number(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def fleet_models(client, names: list[str]) -> list[str]:
    """The models `fleet status` lists: the named ones plus each one's ``-adapted`` model if it exists (the
    robots of a meta-policy), or every registered model when none is named."""
    if not names:
        found, token = [], None
        while True:
            page = client.search_registered_models(max_results=1000, page_token=token)
            found += [m.name for m in page]
            token = getattr(page, "token", None)
            if not token:
                return sorted(found)
    result = []
    for name in names:
        require_model(client, name)
        result.append(name)
        if not name.endswith("-adapted"):
            try:
                client.get_registered_model(f"{name}-adapted")
                result.append(f"{name}-adapted")
            except MlflowException as exc:
                if not not_found(exc):
                    raise
    return list(dict.fromkeys(result))
