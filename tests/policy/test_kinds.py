"""The registry of policy kinds: every kind registered once, old names still load, unknown names are refused."""

from __future__ import annotations

import numpy as np
import pytest

from policy import KINDS, PolicyArtifact, PolicySpec, PolicyWeights, make_policy, policy_kind

SPECS = {
    "mlp": PolicySpec(2, 2, (8,)),
    "rl2": PolicySpec(2, 2, (8,), kind="rl2"),
    "pearl": PolicySpec(2, 2, (8,), "relu", "pearl", "concat", 2),
    "belief": PolicySpec(2, 2, (8,), kind="belief", conditioning="concat", context_dim=2, model_sizes=(4,)),
    "rma": PolicySpec(2, 2, (8,), kind="rma", conditioning="film", context_dim=2, model_sizes=(4,), privileged_dim=3,
                      history=2, encoder_sizes=(4,)),
}


def test_every_registered_kind_builds_its_own_numpy_policy():
    assert set(SPECS) == set(KINDS)
    for name, spec in SPECS.items():
        arrays = {k: np.full(s, 0.1, np.float32) for k, s in spec.weight_shapes().items()}
        arrays |= {"belief.low": -np.ones(2, np.float32), "belief.settings": np.asarray([16, 1, 1.0, 0.1], np.float32),
                   "rma.mode": np.ones(1, np.float32)}
        weights = PolicyWeights(spec, {k: v for k, v in arrays.items() if k in spec.weight_shapes()})
        assert isinstance(make_policy(weights), KINDS[name].policy)


@pytest.mark.parametrize(("old", "new"), [("sac", "pearl"), ("gru", "rl2")])
def test_an_artifact_stored_with_an_old_kind_name_loads_as_its_kind(old, new, tmp_path):
    spec = SPECS[new]
    arrays = {k: np.full(s, 0.1, np.float32) for k, s in spec.weight_shapes().items()}
    artifact = PolicyArtifact.build(PolicyWeights(spec, arrays))
    artifact.manifest["policy"]["kind"] = old  # as an artifact registered before the renames says
    digest = artifact.save(tmp_path)
    assert f'"kind": "{old}"' in (tmp_path / "manifest.json").read_text()
    loaded = PolicyArtifact.load(tmp_path, expected_digest=digest)
    assert loaded.weights.spec.kind == new and policy_kind(old) is KINDS[new]


def test_an_unknown_kind_is_refused_naming_it_and_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown policy kind 'transformer'; known kinds: mlp, rl2, pearl"):
        PolicySpec(2, 2, kind="transformer")
