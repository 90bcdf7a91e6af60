"""PolicyArtifact: safetensors weights + a strict-JSON manifest, sealed by one content digest.
Loading executes nothing: no pickle, no code from the registry, no torch/Ray/pybullet needed on the robot side.

    policy/
      weights.safetensors   arrays named as in policy.spec.PolicySpec.weight_names()
      manifest.json         spaces, network, normaliser layout, adaptation settings, weights_sha256 and
                            content_sha256 (the digest over the whole artifact, see :func:`content_digest`)

The content digest is mandatory: :meth:`PolicyArtifact.load` refuses an artifact without one, or whose
manifest or weights no longer match it, before anything is built from it. Manifests are strict JSON:
non-finite floats (observation bounds of +-inf) are written as the strings ``"inf"`` / ``"-inf"``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from policy.spec import PolicySpec, PolicyWeights

FORMAT = "metafleet.policy/1"
WEIGHTS_FILE, MANIFEST_FILE = "weights.safetensors", "manifest.json"
DIGEST_KEY = "content_sha256"  # the manifest field holding the content digest (excluded from what it covers)
INFINITIES = {"inf": math.inf, "-inf": -math.inf}
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class ArtifactError(ValueError):
    """An artifact that must not be loaded: missing file, digest mismatch, bad schema."""


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def canonical_json(manifest: dict) -> bytes:
    """The one byte form of a (strict-JSON-encoded) manifest that the digest covers: sorted keys, no
    whitespace, UTF-8. Re-serialising a parsed manifest gives the same bytes, so the digest is about
    content, not formatting."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def content_digest(manifest: dict, weights_blob: bytes) -> str:
    """sha256 over ``canonical_json(manifest without content_sha256) + b"\\n" + weights bytes``.

    ``manifest`` is in its on-disk (strict JSON) encoding. Canonical JSON never holds a raw newline, so the
    separator makes the split between the two parts unambiguous.
    """
    covered = {k: v for k, v in manifest.items() if k != DIGEST_KEY}
    return sha256_bytes(canonical_json(covered) + b"\n" + weights_blob)


def encode_values(value: Any, where: str = "manifest") -> Any:
    """A strict-JSON copy: +-inf floats -> ``"inf"`` / ``"-inf"``; NaN is refused (it has no meaning here)."""
    if isinstance(value, dict):
        return {str(k): encode_values(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_values(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        if math.isnan(value):
            raise ArtifactError(f"{where} is NaN; a manifest holds finite numbers or +-inf only")
        return "inf" if value > 0 else "-inf"
    return value


def decode_values(value: Any) -> Any:
    """Inverse of :func:`encode_values`: the strings ``"inf"`` / ``"-inf"`` become floats again."""
    if isinstance(value, dict):
        return {k: decode_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_values(v) for v in value]
    if isinstance(value, str) and value in INFINITIES:
        return INFINITIES[value]
    return value


@dataclass
class PolicyArtifact:
    """A policy and everything needed to run or adapt it, without the training code.

    Usage::

        digest = PolicyArtifact.build(weights, spaces=..., family="reach").save("policy")
        artifact = PolicyArtifact.load("policy", expected_digest=digest)   # raises ArtifactError if changed
    """

    weights: PolicyWeights
    manifest: dict = field(default_factory=dict)

    @classmethod
    def build(cls, weights: PolicyWeights, **manifest) -> PolicyArtifact:
        """`manifest` keys: spaces, family, robot, algorithm, adaptation, task_distribution, ..."""
        header = {"format": FORMAT, "policy": weights.spec.to_dict(), "version": weights.version}
        return cls(weights, {**header, **manifest})

    @property
    def digest(self) -> str | None:
        """The content digest (set by :meth:`save` and :meth:`load`)."""
        return self.manifest.get(DIGEST_KEY)

    def save(self, directory: str | Path) -> str:
        """Write both files; returns the content digest (also stored in the manifest as ``content_sha256``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.weights.arrays.items()}
        blob = save_safetensors(arrays)
        plain = {k: v for k, v in self.manifest.items() if k != DIGEST_KEY}
        encoded = encode_values({**plain, "weights_sha256": sha256_bytes(blob)})
        digest = content_digest(encoded, blob)
        (directory / WEIGHTS_FILE).write_bytes(blob)
        text = json.dumps({**encoded, DIGEST_KEY: digest}, indent=2, sort_keys=True, allow_nan=False)
        (directory / MANIFEST_FILE).write_text(text)
        self.manifest = {**decode_values(encoded), DIGEST_KEY: digest}
        return digest

    @classmethod
    def load(cls, directory: str | Path, expected_digest: str | None = None, expected_from: str = "registry tag",
             expected_weights_sha256: str | None = None) -> PolicyArtifact:
        """Read and verify, in this order: strict JSON, format, the content digest (mandatory; against the
        manifest's own and ``expected_digest``, named ``expected_from`` in errors), the weights sha256
        (against the manifest and ``expected_weights_sha256``), the array schema."""
        directory = Path(directory)
        manifest_text, blob = _read_files(directory)
        encoded = _parse_strict(manifest_text)
        if encoded.get("format") != FORMAT:
            raise ArtifactError(f"unsupported artifact format {encoded.get('format')!r}; expected {FORMAT!r}")
        digest = _verify_digest(encoded, blob, expected_digest, expected_from)
        weights_sha = sha256_bytes(blob)
        for source, expected in (("manifest", encoded.get("weights_sha256")),
                                 ("registry tag", expected_weights_sha256)):
            if expected is not None and expected != weights_sha:
                raise ArtifactError(f"weights sha256 {weights_sha} does not match the {source} ({expected})")
        manifest = decode_values(encoded)
        try:
            spec = PolicySpec.from_dict(manifest["policy"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{MANIFEST_FILE} has no valid 'policy' network description: {exc!r}") from None
        arrays = load_safetensors(blob)
        check_schema(spec, arrays)
        return cls(PolicyWeights(spec, arrays, str(manifest.get("version", "0"))), {**manifest, DIGEST_KEY: digest})


def _read_files(directory: Path) -> tuple[str, bytes]:
    for name in (MANIFEST_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise ArtifactError(f"policy artifact {str(directory)!r} has no {name}")
    try:
        return (directory / MANIFEST_FILE).read_text(encoding="utf-8"), (directory / WEIGHTS_FILE).read_bytes()
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"cannot read policy artifact {str(directory)!r}: {exc}") from None


def _parse_strict(text: str) -> dict:
    """Strict JSON: no NaN/Infinity literals, no repeated keys, an object at the top."""
    def reject_constant(name: str):
        raise ValueError(f"non-finite number {name} (strict JSON writes infinite bounds as \"inf\"/\"-inf\")")

    def unique_pairs(pairs):
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError(f"repeated key(s) {sorted({k for k in keys if keys.count(k) > 1})}")
        return dict(pairs)

    try:
        manifest = json.loads(text, parse_constant=reject_constant, object_pairs_hook=unique_pairs)
    except ValueError as exc:  # JSONDecodeError is a ValueError too
        raise ArtifactError(f"{MANIFEST_FILE} is not valid JSON (strict: no NaN/Infinity, no repeated keys): "
                            f"{exc}") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{MANIFEST_FILE} must hold a JSON object, got {type(manifest).__name__}")
    return manifest


def _verify_digest(encoded: dict, blob: bytes, expected: str | None, expected_from: str) -> str:
    stored = encoded.get(DIGEST_KEY)
    if not isinstance(stored, str) or not SHA256_HEX.match(stored):
        raise ArtifactError(f"{MANIFEST_FILE} has no valid {DIGEST_KEY} (the digest over manifest and weights is "
                            "mandatory; re-publish artifacts saved without one)")
    actual = content_digest(encoded, blob)
    if actual != stored:
        raise ArtifactError(f"content sha256 {actual} does not match the {DIGEST_KEY} in {MANIFEST_FILE} "
                            f"({stored}): the manifest or the weights changed after the artifact was saved")
    if expected is not None and expected != actual:
        raise ArtifactError(f"content sha256 {actual} does not match the {expected_from} ({expected})")
    return actual


def check_schema(spec: PolicySpec, arrays: dict[str, np.ndarray]) -> None:
    """Every array the spec needs, with the shape it implies, and nothing else — except optional
    Meta-SGD inner rates `inner_lr/<parameter>`, shaped like their parameter, and multi-step MAML's per-step
    rates `inner_lr/steps` [inner_steps]."""
    try:
        expected = spec.weight_shapes()
    except ValueError as exc:
        raise ArtifactError(f"the manifest's network is inconsistent: {exc}") from None
    rates = {f"inner_lr/{k}": v for k, v in expected.items() if k not in ("obs_mean", "obs_std")}
    if "inner_lr/steps" in arrays:  # multi-step MAML's learned rates (learner/maml_chain.py): one per inner step
        rates["inner_lr/steps"] = (max(int(np.size(arrays["inner_lr/steps"])), 1),)
    if not set(expected) <= set(arrays) <= set(expected) | set(rates):
        raise ArtifactError(f"weights arrays {sorted(arrays)} do not match the manifest's network {sorted(expected)}")
    expected = {**expected, **{k: v for k, v in rates.items() if k in arrays}}
    for name, shape in expected.items():
        if tuple(arrays[name].shape) != shape:
            raise ArtifactError(f"weights array {name!r} has shape {tuple(arrays[name].shape)}, expected {shape}")
        if not np.all(np.isfinite(arrays[name])):
            raise ArtifactError(f"weights array {name!r} holds non-finite values")
