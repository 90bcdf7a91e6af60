"""One fleet-history record: how it is written, signed, and parsed back (strictly) from a registry tag.

A record is the tag ``fleet.history.<time_ns:020d>.<8 hex>`` -> one JSON object, keys sorted, no NaN/Infinity.
Reading is strict: the key must have that form and a time no later than now (plus a clock skew), the JSON must
have no repeated key, exactly the fields below, versions that are registry version numbers and figures that
are flat. Anything else is not a record (``ValueError``; the reader skips it with a warning).

With a history key configured (``METAFLEET_HISTORY_KEY``, a secret the registry's writers and auditors share;
robots do not need it) every record carries ``sig``: HMAC-SHA256 over the tag key and the record without
``sig``, so a record copied to another key, edited, or made up without the key does not verify.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

from deploy.wire import refuse_constant, unique_keys

PREFIX = "fleet.history."
FORMAT = 1
MAX_RECORD_CHARS = 5000  # registered_model_tags.value is VARCHAR(5000) in MLflow's SQL stores
MAX_TEXT = 500  # reason and command are cut to this many characters
KEY_ENV = "METAFLEET_HISTORY_KEY"
MIN_KEY_CHARS = 16
MAX_CLOCK_SKEW_NS = 300 * 10**9  # a record may come from a writer whose clock is this far ahead
TAG_KEY = re.compile(r"^fleet\.history\.(\d{20})\.[0-9a-f]{8}$")
VERSION = re.compile(r"^[1-9][0-9]{0,9}$")
ALIAS = re.compile(r"^[\w-]{1,255}$")
FIELDS = {"format", "model", "alias", "from_version", "to_version", "who", "host", "when", "why", "command"}
WHY_FIELDS = {"reason", "gate", "passed", "figures"}


class HistoryError(LookupError):
    """Bad input for a history command: unknown model, an alias that is not set, nothing to roll back to, an
    unusable history key."""


class HistoryKeyError(HistoryError):
    """The configured history key is unusable (too short to be a secret)."""


@dataclass(frozen=True)
class AliasMove:
    """One recorded alias move (``seq`` is its 1-based position in the model's history, oldest first;
    ``signed``: its signature verified against the configured history key)."""

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
    signed: bool = False

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
                "command": self.command, "tag": self.key, "signed": self.signed}


def history_key() -> bytes | None:
    """The configured history key ($METAFLEET_HISTORY_KEY), or None; HistoryKeyError if it is too short."""
    value = os.environ.get(KEY_ENV)
    if not value:
        return None
    if len(value) < MIN_KEY_CHARS:
        raise HistoryKeyError(f"{KEY_ENV} is {len(value)} characters; a history key needs at least {MIN_KEY_CHARS}")
    return value.encode("utf-8")


# ------------------------------------------------------------------------------------------------ write
def encode(record: dict, secret: bytes | None) -> tuple[str, str]:
    """A fresh tag key and the tag's text for ``record`` (signed when a key is configured)."""
    key = f"{PREFIX}{time.time_ns():020d}.{uuid.uuid4().hex[:8]}"
    body = _canonical(record)
    text = body if secret is None else _canonical({**record, "sig": _signature(secret, key, body)})
    if len(text) > MAX_RECORD_CHARS:
        raise ValueError(f"the history record of @{record['alias']} is {len(text)} characters; at most "
                         f"{MAX_RECORD_CHARS} fit a registry tag (fewer or shorter figures)")
    return key, text


def clean_figures(figures: dict) -> dict:
    """Gate figures as a record keeps them: flat, non-finite numbers as null, strings cut to 200 characters."""
    clean = {}
    for name, value in figures.items():
        if isinstance(value, bool) or value is None or isinstance(value, int):
            clean[str(name)] = value
        elif isinstance(value, str):
            clean[str(name)] = value[:200]
        elif hasattr(value, "__float__"):  # float, numpy scalars
            number = float(value)
            clean[str(name)] = number if math.isfinite(number) else None
        else:
            raise TypeError(f"history figure {name!r} is a {type(value).__name__}; expected a number, string, bool "
                            "or None")
    return clean


def _canonical(data: dict) -> str:
    return json.dumps(data, sort_keys=True, allow_nan=False, separators=(",", ":"))


def _signature(secret: bytes, key: str, body: str) -> str:
    # the tag key is signed too: a genuine record copied under a later key (to look newest) does not verify
    return hmac.new(secret, f"{key}\n{body}".encode(), hashlib.sha256).hexdigest()


# ------------------------------------------------------------------------------------------------ read
def parse(key: str, text: str, seq: int, secret: bytes | None, now_ns: int | None = None) -> AliasMove:
    """The record in tag ``key``; ValueError saying why it is not one (or, with ``secret``, not signed by it)."""
    _check_key(key, time.time_ns() if now_ns is None else now_ns)
    data = _strict_json(text)
    signature = data.pop("sig", None)
    if set(data) != FIELDS or data["format"] != FORMAT:
        raise ValueError(f"expected format {FORMAT} with exactly the fields {sorted(FIELDS)}")
    if secret is not None:
        if signature is None:
            raise ValueError(f"unsigned, but {KEY_ENV} is configured: a record written without the key")
        if not isinstance(signature, str) or not hmac.compare_digest(signature,
                                                                      _signature(secret, key, _canonical(data))):
            raise ValueError(f"its signature does not match {KEY_ENV}: forged, edited or moved to another key")
    why = data["why"]
    if not isinstance(why, dict) or set(why) != WHY_FIELDS:
        raise ValueError(f"'why' is not an object with exactly {sorted(WHY_FIELDS)}")
    _check_fields(data, why)
    return AliasMove(seq, key, data["model"], data["alias"], data["from_version"], data["to_version"], data["who"],
                     data["host"], data["when"], why["reason"], why["gate"], why["passed"], why["figures"],
                     data["command"], secret is not None)


def _check_key(key: str, now_ns: int) -> None:
    match = TAG_KEY.match(key)
    if match is None:
        raise ValueError("the tag key is not fleet.history.<20-digit time_ns>.<8 hex>")
    if int(match[1]) > now_ns + MAX_CLOCK_SKEW_NS:
        raise ValueError("the tag key's time is in the future")


def _strict_json(text: str) -> dict:
    try:
        data = json.loads(text, parse_constant=refuse_constant, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _check_fields(data: dict, why: dict) -> None:
    for name in ("model", "who", "host", "when", "command"):
        if not isinstance(data[name], str):
            raise ValueError(f"{name!r} is not a string")
    for name in ("reason", "gate"):
        if not isinstance(why[name], str):
            raise ValueError(f"{name!r} is not a string")
    if not isinstance(data["alias"], str) or not ALIAS.match(data["alias"]):
        raise ValueError("'alias' is not an alias name")
    if not isinstance(data["to_version"], str) or not VERSION.match(data["to_version"]):
        raise ValueError(f"'to_version' {data['to_version']!r} is not a version number")
    if data["from_version"] is not None and not (isinstance(data["from_version"], str)
                                                 and VERSION.match(data["from_version"])):
        raise ValueError(f"'from_version' {data['from_version']!r} is neither a version number nor null")
    if not (why["passed"] is None or isinstance(why["passed"], bool)):  # 1 == True: check the type
        raise ValueError("'passed' is neither true, false nor null")
    figures = why["figures"]
    if not isinstance(figures, dict) or any(isinstance(v, (dict, list)) for v in figures.values()):
        raise ValueError("'figures' is not a flat object")
    try:
        datetime.fromisoformat(data["when"].replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"'when' {data['when']!r} is not an ISO time") from None
