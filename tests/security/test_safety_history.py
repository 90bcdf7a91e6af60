"""Safety stops, served actions, and the fleet history: what an operator can count on when a step, a registry
write or a history entry goes wrong (docs/security.md, "Safety: stops and served actions", "History and
rollback"). Real sqlite registries; no training."""

import json
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from deploy.history import PREFIX, alias_holder, fleet_status, move_alias, read_history, rollback
from deploy.registry import Registry
from deploy.safety import SafetyConfig, SafetyLayer
from metafleet.cli import main
from policy import NumpyGaussianPolicy
from policy.artifact import PolicyArtifact
from tests.deploy.conftest import source_dir
from tests.deploy.tamper import flip_weights_bit
from tests.fakes import make_policy_dir

OBS = np.zeros(5, np.float32)
NAN_OBS = np.full(5, np.nan, np.float32)
KEY = "k" * 32  # a history key, as a registry operator would configure it


# ---- 9: a safe stop ramps to the hold --------------------------------------------------------------------
def ramping(rate=None, ramp_s=0.2, period_s=0.05) -> SafetyLayer:
    config = SafetyConfig(max_action_rate=rate, stop_ramp_s=ramp_s, control_period_s=period_s)
    return SafetyLayer((5,), -np.ones(3), np.ones(3), config)


def test_a_safe_stop_ramps_each_joint_to_the_hold_over_the_configured_time():
    safety = ramping()  # 0.2 s at 0.05 s a step: 4 steps
    safety.filter(OBS, np.array([0.8, -0.4, 0.0]))
    steps = [safety.filter(NAN_OBS, np.ones(3)) for _ in range(5)]
    np.testing.assert_allclose([a for a, _ in steps], [[0.6, -0.3, 0], [0.4, -0.2, 0], [0.2, -0.1, 0], [0, 0, 0],
                                                      [0, 0, 0]], atol=1e-6)
    assert all(info["safe_stop"] and info["reason"] == "non-finite observation" for _, info in steps)
    assert safety.holding and safety.counters["safe_stops"] == 5


def test_a_stop_ramp_never_moves_a_joint_faster_than_the_rate_limit():
    safety = ramping(rate=0.25, ramp_s=0.05)  # asks for one step, but 0.25 per step is the most any entry moves
    for _ in range(4):
        safety.filter(OBS, np.ones(3))
    ramp = safety.ramp_to_hold("operator stop")  # the bridge's call when its client goes away
    np.testing.assert_allclose(ramp, [[0.75] * 3, [0.5] * 3, [0.25] * 3, [0.0] * 3], atol=1e-6)
    assert safety.holding and safety.ramp_to_hold("again") == []


def test_motion_resumes_rate_limited_from_wherever_the_ramp_had_got_to():
    safety = ramping(rate=0.5)
    safety.filter(OBS, np.array([0.5, 0.5, 0.5]))
    stop, info = safety.stop("link lost")
    np.testing.assert_allclose(stop, [0.375] * 3)
    assert info["safe_stop"] and info["reason"] == "link lost"
    resumed, _ = safety.filter(OBS, -np.ones(3))
    np.testing.assert_allclose(resumed, [-0.125] * 3)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.lists(st.floats(width=32), min_size=3, max_size=3), st.booleans()), min_size=1,
                max_size=20), st.sampled_from([0.1, 0.5]), st.sampled_from([0.05, 0.3]))
def test_with_a_ramp_no_step_of_any_kind_outruns_the_rate_limit(steps, rate, ramp_s):
    safety, previous = ramping(rate, ramp_s), np.zeros(3, np.float32)
    for proposal, nan_obs in steps:
        action, _ = safety.filter(NAN_OBS if nan_obs else OBS, np.array(proposal, np.float32))
        assert np.isfinite(action).all() and (np.abs(action) <= 1).all()
        assert (np.abs(action - previous) <= rate + 1e-6).all()  # a stop step included
        previous = action


def test_by_default_a_safe_stop_ramps_to_the_hold_instead_of_jumping_to_zero():
    # SafetyConfig(): what the runtime, adapt and the bridge server get unless told otherwise
    safety = SafetyLayer((5,), -np.ones(3), np.ones(3))
    for _ in range(2):  # rate-limited to 0.5 a step: at the proposal after two steps
        safety.filter(OBS, np.array([0.8, -0.4, 0.0]))
    ramp = [safety.filter(NAN_OBS, np.ones(3))[0] for _ in range(10)]  # 0.5 s at 0.05 s a step: 10 steps
    np.testing.assert_allclose(ramp, np.outer(np.arange(9, -1, -1) / 10, [0.8, -0.4, 0.0]), atol=1e-6)
    assert safety.holding and SafetyConfig().stop_ramp_s == 0.5


def test_stop_ramp_s_0_is_the_explicit_opt_out_a_stop_at_once():
    safety = SafetyLayer((5,), -np.ones(3), np.ones(3), SafetyConfig(stop_ramp_s=0))
    safety.filter(OBS, np.array([0.4, 0.4, 0.4]))
    np.testing.assert_array_equal(safety.filter(NAN_OBS, None)[0], np.zeros(3))
    with pytest.raises(ValueError, match="stop_ramp_s"):
        SafetyConfig(stop_ramp_s=-1.0)


# ---- 10: the served model is bounded ---------------------------------------------------------------------
def test_the_served_model_returns_only_actions_within_the_safety_layers_bounds(tmp_path):
    import mlflow

    from deploy.mlflow_model import save_policy_model

    artifact = PolicyArtifact.load(make_policy_dir(tmp_path / "policy", head_scale=20.0))
    save_policy_model(artifact, tmp_path / "model")
    obs = np.random.default_rng(0).normal(size=(8, 20)).astype(np.float32)
    raw = NumpyGaussianPolicy(artifact.weights).mean(obs)
    assert np.abs(raw).max() > 5  # the policy itself proposes actions far outside [-1, 1]
    served = mlflow.pyfunc.load_model(str(tmp_path / "model")).predict(obs)
    np.testing.assert_allclose(served, np.clip(raw, -1, 1), rtol=1e-6)


def test_a_policy_without_finite_action_bounds_is_not_served(tmp_path):
    from deploy.serving import PolicyModel
    from policy.artifact import ArtifactError

    artifact = PolicyArtifact.load(make_policy_dir(tmp_path / "policy"))
    spaces = artifact.manifest["spaces"]
    unbounded = {**spaces["action"], "high": [float("inf")] * 3}
    artifact.manifest = {**artifact.manifest, "spaces": {**spaces, "action": unbounded}}
    with pytest.raises(ArtifactError, match="refusing to serve"):
        PolicyModel.from_artifact(artifact)


# ---- a bare registry: history without trained versions ---------------------------------------------------
@pytest.fixture
def bare(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("METAFLEET_HISTORY_KEY", raising=False)
    client = MlflowClient(uri, uri)
    client.create_registered_model("m")
    for _ in range(3):
        client.create_model_version("m", source="/nowhere/m")
    return client


def adapt(client, version, passed=True):
    return move_alias(client, "m", "robot-r1", version, reason=f"to {version}", gate="adapt", passed=passed)


class FailingWrite:
    """The registry client, except that its ``fail_at``-th write (alias or tag) raises once."""

    def __init__(self, client, fail_at: int):
        self.client, self.fail_at, self.writes = client, fail_at, 0

    def __getattr__(self, name):
        real = getattr(self.client, name)
        if name not in ("set_registered_model_alias", "set_registered_model_tag"):
            return real

        def write(*args, **kwargs):
            self.writes += 1
            if self.writes == self.fail_at:
                raise MlflowException("injected: the registry went away between two writes")
            return real(*args, **kwargs)
        return write


# ---- 11: record, then move; a retry finishes the same move ------------------------------------------------
@pytest.mark.parametrize("fail_at", [1, 2])
def test_a_rollback_interrupted_between_its_two_writes_is_finished_by_a_retry_never_reversed(bare, fail_at):
    adapt(bare, "1")
    adapt(bare, "2")
    with pytest.raises((RuntimeError, MlflowException)):
        rollback(FailingWrite(bare, fail_at), "m", "robot-r1")
    records, _ = read_history(bare, "m", "robot-r1")
    assert alias_holder(bare, "m", "robot-r1") in ("2", records[-1].to_version)  # never moved without a record
    move, _ = rollback(bare, "m", "robot-r1")  # the operator runs the same command again
    assert (move.from_version, move.to_version) == ("2", "1") and alias_holder(bare, "m", "robot-r1") == "1"
    records, _ = read_history(bare, "m", "robot-r1")
    assert [(r.gate, r.to_version) for r in records] == [("adapt", "1"), ("adapt", "2"), ("rollback", "1")]


def test_a_move_retried_after_its_record_was_written_records_it_once(bare):
    adapt(bare, "1")
    with pytest.raises(RuntimeError, match="run the same command again"):
        move_alias(FailingWrite(bare, 2), "m", "robot-r1", "2", reason="r", gate="adapt", passed=True)
    row = fleet_status(bare, ["m"])[0]
    assert (row["version"], row["recorded"], row["pending"]) == ("1", True, "2")  # v1 explained, v2 pending
    adapt(bare, "2")
    assert alias_holder(bare, "m", "robot-r1") == "2"
    assert [r.to_version for r in read_history(bare, "m")[0]] == ["1", "2"]


# ---- 12: strict parsing, signed entries ------------------------------------------------------------------
def forged_entries(client) -> dict[str, str]:
    """Tags an attacker with registry write access adds; each would change what a rollback picks."""
    tags = client.get_registered_model("m").tags
    first = min(k for k in tags if k.startswith(PREFIX))
    record = json.loads(tags[first])
    now = time.time_ns()
    return {f"{PREFIX}99999999999999999999.00000001": tags[first],  # sorts last: "the newest move"
            f"{PREFIX}{now:020d}.00000002": tags[first][:-1] + ',"from_version":"3"}',  # a duplicate key
            f"{PREFIX}{now:020d}.00000003": json.dumps({**record, "to_version": "latest"})}


def test_forged_or_loose_entries_are_skipped_with_a_warning_naming_each(bare, capfd):
    adapt(bare, "1")
    adapt(bare, "2")
    forged = forged_entries(bare)
    for key, value in forged.items():
        bare.set_registered_model_tag("m", key, value)
    records, problems = read_history(bare, "m")
    assert [r.to_version for r in records] == ["1", "2"] and len(problems) == 3
    assert all(any(key in line for line in problems) for key in forged)
    assert main(["history", "m"]) == 0 and "2 recorded alias moves" in capfd.readouterr().out
    assert rollback(bare, "m", "robot-r1")[0].to_version == "1"
    assert main(["rollback", "m", "--robot", "r1"]) == 2  # nothing earlier: a message, not a ValueError
    assert "Traceback" not in capfd.readouterr().err


def test_with_a_history_key_every_entry_is_signed_and_verify_names_a_forged_one(bare, capfd, monkeypatch):
    assert main(["history", "m", "--verify"]) == 2
    assert "METAFLEET_HISTORY_KEY" in capfd.readouterr().err
    monkeypatch.setenv("METAFLEET_HISTORY_KEY", "short")
    assert main(["history", "m"]) == 2 and "needs at least 16" in capfd.readouterr().err
    monkeypatch.setenv("METAFLEET_HISTORY_KEY", KEY)
    adapt(bare, "1")
    adapt(bare, "3")
    adapt(bare, "2")
    assert main(["history", "m", "--verify"]) == 0
    assert "3 records signed" in capfd.readouterr().out
    tags = bare.get_registered_model("m").tags
    keys = sorted(k for k in tags if k.startswith(PREFIX))
    # a copy of v3's genuine, signed record under a new key (after v2's move): the signature covers the key
    forged = f"{keys[-1][:-8]}ffffffff"
    bare.set_registered_model_tag("m", forged, tags[keys[1]])
    assert main(["history", "m", "--verify"]) == 1
    err = capfd.readouterr().err
    assert forged in err and "signature" in err
    assert [r.to_version for r in read_history(bare, "m")[0]] == ["1", "3", "2"]
    monkeypatch.setenv("METAFLEET_HISTORY_KEY", "another key, not the registry's")
    assert main(["history", "m", "--verify"]) == 1 and keys[0] in capfd.readouterr().err


# ---- 13: a rollback verifies the version it restores -----------------------------------------------------
@pytest.fixture
def published(tmp_path, monkeypatch):
    """Two real versions of `reach` (Registry.publish), @robot-r1 moved to v1 then v2."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("METAFLEET_HISTORY_KEY", raising=False)
    registry = Registry(uri)
    experiment = registry.client.create_experiment("t", artifact_location=str(tmp_path / "artifacts"))
    for scale in (1.0, 0.5):
        artifact = PolicyArtifact.load(make_policy_dir(tmp_path / f"policy-{scale}", head_scale=scale))
        version = registry.publish("reach", artifact, registry.client.create_run(experiment).info.run_id)
        move_alias(registry.client, "reach", "robot-r1", version, reason="adapted", gate="adapt", passed=True)
    return registry


def test_a_rollback_to_a_version_whose_files_changed_is_refused_before_the_alias_moves(published, capfd):
    flip_weights_bit(source_dir(published.uri, "reach", "1"))
    assert main(["rollback", "reach", "--robot", "r1"]) == 2
    err = capfd.readouterr().err
    assert "models:/reach/1" in err and "does not match" in err
    assert alias_holder(published.client, "reach", "robot-r1") == "2"
    assert [r.gate for r in read_history(published.client, "reach")[0]] == ["adapt", "adapt"]


def test_a_rollback_to_an_intact_version_moves(published, capfd):
    assert main(["rollback", "reach", "--robot", "r1"]) == 0, capfd.readouterr().err
    assert alias_holder(published.client, "reach", "robot-r1") == "1"
