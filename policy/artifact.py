"""PolicyArtifact: safetensors weights + a JSON manifest. Loading executes nothing: no pickle,
no code from the registry, no torch/Ray/pybullet needed on the robot side.

    policy/
      weights.safetensors   arrays named as in policy.spec.PolicySpec.weight_names()
      manifest.json         spaces, network, normaliser layout, adaptation settings, sha256
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from policy.spec import PolicySpec, PolicyWeights

FORMAT = "metafleet.policy/1"
WEIGHTS_FILE, MANIFEST_FILE = "weights.safetensors", "manifest.json"


class ArtifactError(ValueError):
    """An artifact that must not be loaded: missing file, digest mismatch, bad schema."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class PolicyArtifact:
    """A policy and everything needed to run or adapt it, without the training code."""

    weights: PolicyWeights
    manifest: dict = field(default_factory=dict)

    @classmethod
    def build(cls, weights: PolicyWeights, **manifest) -> PolicyArtifact:
        """`manifest` keys: spaces, family, robot, algorithm, adaptation, task_distribution, ..."""
        header = {"format": FORMAT, "policy": weights.spec.to_dict(), "version": weights.version}
        return cls(weights, {**header, **manifest})

    def save(self, directory: str | Path) -> str:
        """Write both files; returns the weights' sha256 (also stored in the manifest)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.weights.arrays.items()}
        blob = save_safetensors(arrays)
        digest = sha256_bytes(blob)
        (directory / WEIGHTS_FILE).write_bytes(blob)
        self.manifest["weights_sha256"] = digest
        (directory / MANIFEST_FILE).write_text(json.dumps(self.manifest, indent=2, sort_keys=True))
        return digest

    @classmethod
    def load(cls, directory: str | Path, expected_sha256: str | None = None) -> PolicyArtifact:
        """Read and verify: digest (against the manifest and `expected_sha256`), array schema."""
        directory = Path(directory)
        for name in (MANIFEST_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise ArtifactError(f"policy artifact {str(directory)!r} has no {name}")
        try:
            manifest = json.loads((directory / MANIFEST_FILE).read_text())
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{MANIFEST_FILE} is not valid JSON: {exc}") from None
        if manifest.get("format") != FORMAT:
            raise ArtifactError(f"unsupported artifact format {manifest.get('format')!r}; expected {FORMAT!r}")
        blob = (directory / WEIGHTS_FILE).read_bytes()
        digest = sha256_bytes(blob)
        for source, expected in (("manifest", manifest.get("weights_sha256")), ("registry tag", expected_sha256)):
            if expected is not None and expected != digest:
                raise ArtifactError(f"weights sha256 {digest} does not match the {source} ({expected})")
        spec = PolicySpec.from_dict(manifest["policy"])
        arrays = load_safetensors(blob)
        check_schema(spec, arrays)
        return cls(PolicyWeights(spec, arrays, str(manifest.get("version", "0"))), manifest)


def check_schema(spec: PolicySpec, arrays: dict[str, np.ndarray]) -> None:
    """Every array the spec needs, with the shape it implies, and nothing else — except optional
    Meta-SGD inner rates `inner_lr/<parameter>`, shaped like their parameter."""
    try:
        expected = spec.weight_shapes()
    except ValueError as exc:
        raise ArtifactError(f"the manifest's network is inconsistent: {exc}") from None
    rates = {f"inner_lr/{k}": v for k, v in expected.items() if k not in ("obs_mean", "obs_std")}
    if not set(expected) <= set(arrays) <= set(expected) | set(rates):
        raise ArtifactError(f"weights arrays {sorted(arrays)} do not match the manifest's network {sorted(expected)}")
    expected = {**expected, **{k: v for k, v in rates.items() if k in arrays}}
    for name, shape in expected.items():
        if tuple(arrays[name].shape) != shape:
            raise ArtifactError(f"weights array {name!r} has shape {tuple(arrays[name].shape)}, expected {shape}")
        if not np.all(np.isfinite(arrays[name])):
            raise ArtifactError(f"weights array {name!r} holds non-finite values")
