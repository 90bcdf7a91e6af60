"""`pull.json`: what `fleet pull` verified, kept beside the policy so that every load verifies it again.

A pulled policy lives in ``.DIR.versions/<content_sha256[:16]>/`` (see :mod:`deploy.pull`). Its record
names the content digest that was verified at pull time; :func:`recorded_digest` returns it for every
loader of a local directory (the runtime of `fleet run`; `Registry.resolve` for eval, adapt and pull) to
check the directory against, so a pulled directory changed afterwards (weights, manifest, even with a
recomputed manifest digest), or a copy of one holding its pull.json, is refused. Imports nothing beyond the
standard library and the policy package: it runs on the robot.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from policy.artifact import ArtifactError

RECORD_FILE = "pull.json"
STORE_NAME = re.compile(r"^\..+\.versions$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
PULL_RECORD = "digest `fleet pull` verified (pull.json)"  # what a mismatch against the record is called


def write_record(directory: Path, uri: str, name: str | None, version: str | None, digest: str,
                 weights_sha256: str) -> None:
    """Write ``pull.json`` (provenance + the verified content digest) into a staged policy directory."""
    record = {"uri": uri, "name": name, "version": version, "content_sha256": digest,
              "weights_sha256": weights_sha256, "pulled_at": time.time()}
    (directory / RECORD_FILE).write_text(json.dumps(record, indent=2, allow_nan=False))


def is_pulled(directory: str | Path) -> bool:
    """True for a directory `fleet pull` made: it (or the link pointing at it) sits in a ``.X.versions`` store."""
    return bool(STORE_NAME.match(Path(directory).resolve().parent.name))


def recorded_digest(directory: str | Path) -> str | None:
    """The content digest `fleet pull` recorded for ``directory``; None for a directory it did not make.

    Raises :class:`ArtifactError` for a pulled directory whose record is missing, unreadable, or does not
    name the directory (the store names each version by its digest's first 16 hex digits).
    """
    directory = Path(directory)
    pulled, path = is_pulled(directory), directory / RECORD_FILE
    if not pulled and not path.exists():
        return None
    where = f"pulled policy {str(directory)!r}"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{where} has no {RECORD_FILE}: pull it again with `fleet pull`") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ArtifactError(f"{where}: cannot read {RECORD_FILE}: {exc}") from None
    digest = record.get("content_sha256") if isinstance(record, dict) else None
    if not isinstance(digest, str) or not SHA256_HEX.match(digest):
        raise ArtifactError(f"{where}: {RECORD_FILE} records no valid content_sha256; pull it again")
    if pulled and directory.resolve().name != digest[:16]:
        raise ArtifactError(f"{where}: {RECORD_FILE} records content sha256 {digest}, but the directory is "
                            f"{directory.resolve().name!r}; the pulled policy was changed after the pull")
    return digest
