"""Ways to tamper with a policy artifact on disk, as an attacker with write access to the files would."""

import json
from collections.abc import Callable
from pathlib import Path

from policy.artifact import DIGEST_KEY, MANIFEST_FILE, WEIGHTS_FILE, content_digest


def flip_weights_bit(directory: Path) -> None:
    """One flipped bit in the weights file."""
    blob = bytearray((directory / WEIGHTS_FILE).read_bytes())
    blob[-1] ^= 0x01
    (directory / WEIGHTS_FILE).write_bytes(bytes(blob))


def edit_manifest(directory: Path, edit: Callable[[dict], None], reseal: bool = False) -> None:
    """Apply ``edit`` to manifest.json; with ``reseal`` also replace its content digest by the one of the
    edited files (what an attacker who knows the format does)."""
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    edit(manifest)
    if reseal:
        manifest[DIGEST_KEY] = content_digest(manifest, (directory / WEIGHTS_FILE).read_bytes())
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


def reseal(directory: Path) -> str:
    """Replace the manifest's content digest by the digest of the files as they are now; return it."""
    edit_manifest(directory, lambda m: None, reseal=True)
    return json.loads((directory / MANIFEST_FILE).read_text())[DIGEST_KEY]


def widen_action_bounds(manifest: dict) -> None:
    """The edit that matters most on a robot: action bounds x100."""
    action = manifest["spaces"]["action"]
    action["low"] = [100 * v for v in action["low"]]
    action["high"] = [100 * v for v in action["high"]]
