"""Fleet history: every alias move (candidate, production, robot-<id>) made and recorded in one place.

    move_alias(client, "reach-maml-adapted", "robot-kuka-7", "4", reason=..., gate="adapt", passed=True,
               figures={"return_before": -3.1, "return_after": -1.2}, command="fleet adapt ...")

The record lives in the MLflow registry itself, beside the alias: one registered-model tag per move,
``fleet.history.<time_ns:020d>.<8 hex>`` -> one strict JSON object (no NaN/Infinity, parsed back with
``json.loads`` and checked field by field; nothing is ever executed). Any ``MlflowClient`` reads it
(``client.get_registered_model(name).tags``); the tag keys sort oldest first; a record is < 5000 characters
(the SQL stores' column size). A move is: read the alias's holder, set the alias, write the record. A
crash between the last two leaves an alias the history does not explain: `fleet status` says so.

Rollback (``rollback``) moves an alias back to the newest version it pointed to earlier whose move passed
its gate (``passed`` true, or null where the alias has no gate, e.g. ``candidate`` = newest), skipping the
current holder, versions rolled back from (until a gate passes them again) and deleted versions.
"""

from __future__ import annotations

import getpass
import json
import math
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from mlflow.exceptions import MlflowException

PREFIX = "fleet.history."
FORMAT = 1
MAX_RECORD_CHARS = 5000  # registered_model_tags.value is VARCHAR(5000) in MLflow's SQL stores
MAX_TEXT = 500  # reason and command are cut to this many characters
USER_ENV = "METAFLEET_USER"
ROLLBACK = "rollback"


class HistoryError(LookupError):
    """Bad input for a history command: unknown model, an alias that is not set, nothing to roll back to."""


@dataclass(frozen=True)
class AliasMove:
    """One recorded alias move (``seq`` is its 1-based position in the model's history, oldest first)."""

    seq: int
    key: str
    model: str
    alias: str
    from_version: str | None
    to_version: str
    who: str
    host: str
    when: str
    reason: str
    gate: str
    passed: bool | None
    figures: dict
    command: str

    @property
    def robot(self) -> str | None:
        return self.alias[len("robot-"):] if self.alias.startswith("robot-") else None

    @property
    def good(self) -> bool:
        """The version this move set passed its gate (or the alias has none)."""
        return self.passed is not False

    def to_dict(self) -> dict:
        return {"seq": self.seq, "model": self.model, "alias": self.alias, "robot": self.robot,
                "from_version": self.from_version, "to_version": self.to_version, "who": self.who,
                "host": self.host, "when": self.when,
                "why": {"reason": self.reason, "gate": self.gate, "passed": self.passed, "figures": self.figures},
                "command": self.command, "tag": self.key}


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
    """Point ``models:/model@alias`` at ``version`` and record who/when/why in the registry.

    ``gate``: what decided (``train``, ``promote``, ``adapt``, ``rollback``); ``passed``: whether the version
    passed that gate (None: the alias has no gate); ``figures``: the gate's numbers (flat: str -> number,
    string, bool or None; non-finite numbers are recorded as null)."""
    version = str(version)
    previous = alias_holder(client, model, alias)
    record = {"format": FORMAT, "model": model, "alias": alias, "from_version": previous, "to_version": version,
              "who": current_user(), "host": socket.gethostname(),
              "when": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
              "why": {"reason": str(reason)[:MAX_TEXT], "gate": str(gate), "passed": passed,
                      "figures": _clean_figures(figures or {})},
              "command": str(command)[:MAX_TEXT]}
    text = json.dumps(record, sort_keys=True, allow_nan=False, separators=(",", ":"))
    if len(text) > MAX_RECORD_CHARS:
        raise ValueError(f"the history record of @{alias} is {len(text)} characters; at most {MAX_RECORD_CHARS} "
                         "fit a registry tag (fewer or shorter figures)")
    key = f"{PREFIX}{time.time_ns():020d}.{uuid.uuid4().hex[:8]}"
    client.set_registered_model_alias(model, alias, version)
    try:
        client.set_registered_model_tag(model, key, text)
    except MlflowException as exc:
        raise RuntimeError(f"models:/{model}@{alias} moved to v{version} but its history record could not be "
                           f"written: {exc}") from None
    records, _ = read_history(client, model)
    return next((r for r in records if r.key == key), _parse(key, text, len(records) + 1))


def _clean_figures(figures: dict) -> dict:
    clean = {}
    for name, value in figures.items():
        if isinstance(value, bool) or value is None:
            clean[str(name)] = value
        elif isinstance(value, str):
            clean[str(name)] = value[:200]
        elif isinstance(value, int):
            clean[str(name)] = value
        elif hasattr(value, "__float__"):  # float, numpy scalars
            number = float(value)
            clean[str(name)] = number if math.isfinite(number) else None
        else:
            raise TypeError(f"history figure {name!r} is a {type(value).__name__}; expected a number, string, bool "
                            "or None")
    return clean


# ------------------------------------------------------------------------------------------------ read
def require_model(client, model: str):
    """The registered model, or HistoryError naming it."""
    try:
        return client.get_registered_model(model)
    except MlflowException:
        raise HistoryError(f"no registered model {model!r} in the registry") from None


def alias_holder(client, model: str, alias: str) -> str | None:
    """The version ``models:/model@alias`` points at, or None."""
    try:
        return str(client.get_model_version_by_alias(model, alias).version)
    except MlflowException:
        return None


def read_history(client, model: str, alias: str | None = None) -> tuple[list[AliasMove], list[str]]:
    """The model's recorded moves, oldest first (of ``alias`` only, if given), and one line per tag under the
    history prefix that is not a valid record (such tags are reported, never trusted)."""
    tags = require_model(client, model).tags
    records, problems = [], []
    for key in sorted(k for k in tags if k.startswith(PREFIX)):
        try:
            record = _parse(key, tags[key], len(records) + 1)
        except ValueError as exc:
            problems.append(f"tag {key!r} of {model!r} is not a valid history record ({exc}); ignored")
            continue
        if record.model != model:
            problems.append(f"tag {key!r} of {model!r} records a move of {record.model!r}; ignored")
            continue
        records.append(record)
    return [r for r in records if alias is None or r.alias == alias], problems


def _reject_constant(name: str):
    raise ValueError(f"{name} is not strict JSON")


def _parse(key: str, text: str, seq: int) -> AliasMove:
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"expected a JSON object with format {FORMAT}")
    why = data.get("why")
    if not isinstance(why, dict):
        raise ValueError("'why' is not an object")
    strings = {"model": data.get("model"), "alias": data.get("alias"), "to_version": data.get("to_version"),
               "who": data.get("who"), "host": data.get("host"), "when": data.get("when"),
               "command": data.get("command"), "reason": why.get("reason"), "gate": why.get("gate")}
    for name, value in strings.items():
        if not isinstance(value, str):
            raise ValueError(f"{name!r} is not a string")
    if data.get("from_version") is not None and not isinstance(data["from_version"], str):
        raise ValueError("'from_version' is neither a string nor null")
    if why.get("passed") not in (True, False, None):
        raise ValueError("'passed' is neither true, false nor null")
    figures = why.get("figures")
    if not isinstance(figures, dict) or any(isinstance(v, (dict, list)) for v in figures.values()):
        raise ValueError("'figures' is not a flat object")
    try:
        datetime.fromisoformat(strings["when"].replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"'when' {strings['when']!r} is not an ISO time") from None
    return AliasMove(seq, key, strings["model"], strings["alias"], data.get("from_version"), strings["to_version"],
                     strings["who"], strings["host"], strings["when"], strings["reason"], strings["gate"],
                     why.get("passed"), figures, strings["command"])


# ------------------------------------------------------------------------------------------------ rollback
def rollback_target(records: list[AliasMove], current: str | None, exists=lambda version: True) -> AliasMove | None:
    """The record of the version to roll ``current`` back to: the newest earlier holder of the alias that is
    still good (its last move passed its gate and no rollback moved away from it since), not ``current``,
    and that still ``exists``. ``records`` are one alias's moves, oldest first."""
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


def rollback(client, model: str, alias: str, reason: str = "", command: str = "") -> tuple[AliasMove, AliasMove]:
    """Move ``models:/model@alias`` back to its previous good version; (the new move, the restored version's
    gate record). HistoryError: unknown model, alias not set, or no earlier good version."""
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
        except MlflowException:
            return False

    target = rollback_target(records, current, exists)
    if target is None:
        earlier = sorted({r.to_version for r in records} - {current}, key=int)
        raise HistoryError(f"nothing to roll back to: models:/{model}@{alias} is on v{current} and "
                           + (f"no earlier version it held (v{', v'.join(earlier)}) passed its gate without being "
                              "rolled back since" if earlier else "the history records no earlier version of it"))
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
    except MlflowException:
        return ""
    return f" (robot aliases are set on {model + '-adapted'!r}, the adapted versions of {model!r})"


# ------------------------------------------------------------------------------------------------ status
def fleet_status(client, models: list[str]) -> list[dict]:
    """One row per alias of each model: the version it is on, the parent meta-policy and adaptation gain
    (version tags), and its last recorded move (``recorded`` false: the alias moved outside this history)."""
    rows = []
    for model in models:
        registered = require_model(client, model)
        records, _ = read_history(client, model)
        for alias, version in sorted(registered.aliases.items()):
            version = str(version)
            tags = dict(client.get_model_version(model, version).tags)
            moves = [r for r in records if r.alias == alias]
            last = moves[-1] if moves and moves[-1].to_version == version else None
            before, after = _number(tags.get("return_before")), _number(tags.get("return_after"))
            parent = f"{tags['parent_model']}/{tags['parent_version']}" if tags.get("parent_model") else None
            rows.append({"model": model, "alias": alias, "robot": alias[6:] if alias.startswith("robot-") else None,
                         "version": version, "parent": parent,
                         "gain": None if before is None or after is None else after - before,
                         "return_before": before, "return_after": after, "recorded": last is not None,
                         "moved": last.when if last else None, "by": last.who if last else None,
                         "why": last.reason if last else None, "gate": last.gate if last else None})
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
            except MlflowException:
                pass
    return list(dict.fromkeys(result))
