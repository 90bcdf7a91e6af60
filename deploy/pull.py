"""Verified, atomic pulls of a registered policy into a directory on a robot.

Layout after `pull(uri, "policy")`:

    policy            -> .policy.versions/<content_sha256[:16]>     (symlink, switched atomically)
    policy.last-good  -> the previous target                        (kept for rollback)
    .policy.versions/<sha>/weights.safetensors, manifest.json, pull.json

Nothing is switched until the download is verified (content digest over manifest + weights against
the manifest's own and the registry tags, array schema): a failed pull leaves the current policy in
place. `pull.json` records the digest verified here; `fleet run` checks the directory against it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from deploy.pull_record import recorded_digest, write_record
from deploy.registry import Registry
from policy.artifact import MANIFEST_FILE, WEIGHTS_FILE, ArtifactError, PolicyArtifact


@dataclass
class PullResult:
    uri: str
    path: Path
    target: Path
    sha256: str
    name: str | None
    version: str | None
    previous: Path | None
    seconds: float

    def to_dict(self) -> dict:
        return {"uri": self.uri, "path": str(self.path), "target": str(self.target), "sha256": self.sha256,
                "name": self.name, "version": self.version,
                "previous": str(self.previous) if self.previous else None, "seconds": round(self.seconds, 3)}


def versions_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.versions"


def pull(uri: str, out: str | Path, registry: Registry | None = None) -> PullResult:
    """Download, verify, then atomically point `out` at the new policy."""
    started = time.perf_counter()
    out = Path(out).absolute()
    if out.exists() and not out.is_symlink():
        raise ArtifactError(f"--out {str(out)!r} exists and is not a policy link made by `fleet pull`; "
                            "choose a new path (it will become a symlink to verified versions)")
    registry = registry or Registry()
    resolved = registry.resolve(uri)
    store = versions_dir(out)
    store.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=store))
    try:
        downloaded = registry.download(resolved, staging / "download")
        artifact = PolicyArtifact.load(downloaded, expected_digest=resolved.sha256,  # raises before any switch
                                       expected_weights_sha256=resolved.weights_sha256)
        digest = artifact.digest
        target = store / digest[:16]
        if target.is_dir() and not _intact(target, digest):
            shutil.rmtree(target)  # a stored copy changed on disk: replace it with the verified download
        if not target.is_dir():
            fresh = staging / "policy"
            fresh.mkdir()
            for name in (WEIGHTS_FILE, MANIFEST_FILE):
                shutil.copy2(downloaded / name, fresh / name)  # only the two files: nothing else travels
            write_record(fresh, uri, resolved.name, resolved.version, digest, artifact.manifest["weights_sha256"])
            PolicyArtifact.load(fresh, expected_digest=digest, expected_from="digest verified at download")
            os.replace(fresh, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    previous = out.resolve() if out.is_symlink() else None
    _switch(out, target)
    if previous is not None and previous != target:
        _switch(out.with_name(out.name + ".last-good"), previous)
    return PullResult(uri, out, target, digest, resolved.name, resolved.version, previous,
                      time.perf_counter() - started)


def _intact(directory: Path, digest: str) -> bool:
    """Whether a stored version still verifies against ``digest`` (and its pull record)."""
    try:
        recorded = recorded_digest(directory)
        PolicyArtifact.load(directory, expected_digest=digest)
    except ArtifactError:
        return False
    return recorded == digest


def _switch(link: Path, target: Path) -> None:
    """Atomically (re)point `link` at `target`: a new symlink renamed over the old one."""
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target, link.parent), tmp)
    os.replace(tmp, link)
