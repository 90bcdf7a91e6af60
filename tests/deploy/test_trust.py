"""The tamper matrix: every changed artifact is refused on every load path (exit 2, clear message), the
robot's current and last-good policies stay untouched, and no command imports code a manifest names."""

import contextlib
import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from metafleet.cli import main
from policy.artifact import DIGEST_KEY, PolicyArtifact
from tests.deploy.conftest import source_dir
from tests.deploy.tamper import edit_manifest, flip_weights_bit, reseal, widen_action_bounds

CANARY = "canary_plugin_h3"
EVAL = ["--backend", "local", "--workers", "1", "--episodes", "1", "--tasks", "1", "--steps", "0"]


def fleet(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def snapshot(out: Path) -> dict:
    """Where the robot's policy links point and the bytes of every file behind them."""
    state = {}
    for link in (out, out.with_name(out.name + ".last-good")):
        target = link.resolve()
        state[link.name] = (str(target), {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                                          for p in sorted(target.iterdir())})
    return state


@pytest.fixture
def robot_dir(store, tmp_path, capsys):
    """A robot that pulled version 1 then version 2: `policy` -> v2, `policy.last-good` -> v1."""
    out = tmp_path / "policy"
    for version in (1, 2):
        assert fleet(capsys, "pull", f"models:/smoke/{version}", "--out", out)[0] == 0
    return out


@contextlib.contextmanager
def tampered_source(store, tmp_path, tamper):
    """Tamper with the registered files of models:/smoke/2 for the duration of the block."""
    source = source_dir(store, "smoke", "2")
    backup = tmp_path / "source-backup"
    shutil.copytree(source, backup)
    try:
        tamper(source)
        yield source
    finally:
        shutil.rmtree(source)
        shutil.copytree(backup, source)
        shutil.rmtree(backup)


def remove_digest(directory: Path) -> None:
    edit_manifest(directory, lambda m: m.pop(DIGEST_KEY))


REGISTERED_TAMPERS = {
    "weights changed": (flip_weights_bit, "does not match the content_sha256 in manifest.json"),
    "manifest changed (action bounds widened)": (lambda d: edit_manifest(d, widen_action_bounds),
                                                 "does not match the content_sha256 in manifest.json"),
    "digest removed": (remove_digest, "has no valid content_sha256"),
    "digest replaced, registry tag kept": (lambda d: edit_manifest(d, widen_action_bounds, reseal=True),
                                           "does not match the registry tag"),
}


@pytest.mark.parametrize("case", list(REGISTERED_TAMPERS))
def test_tampered_registered_version_is_refused_everywhere(case, store, robot_dir, tmp_path, capsys):
    tamper, message = REGISTERED_TAMPERS[case]
    before = snapshot(robot_dir)
    run_id = MlflowClient(store, store).get_model_version("smoke", "2").run_id
    with tampered_source(store, tmp_path, tamper):
        commands = {
            "pull": ["pull", "models:/smoke/2", "--out", tmp_path / "fresh"],
            "pull runs:/": ["pull", f"runs:/{run_id}/policy", "--out", tmp_path / "fresh-run"],
            "eval": ["eval", "models:/smoke/2", *EVAL],
            "promote": ["promote", "smoke", "--version", "2", "--alias", "trust-test", "--episodes", "1",
                        "--tasks", "1"],
            "adapt": ["adapt", "models:/smoke/2", "--robot", "sim:kuka-9", "--episodes", "1"],
        }
        for name, argv in commands.items():
            code, err = fleet(capsys, *argv)
            assert code == 2 and message in err and err.startswith("fleet: error:"), (name, err)
    assert snapshot(robot_dir) == before
    assert not (tmp_path / "fresh").exists() and not (tmp_path / "fresh-run").exists()
    with pytest.raises(Exception, match="trust-test"):
        MlflowClient(store, store).get_model_version_by_alias("smoke", "trust-test")


def test_local_directory_tampered(store, robot_dir, tmp_path, capsys):
    before = snapshot(robot_dir)
    local = tmp_path / "local"
    shutil.copytree(source_dir(store, "smoke", "1"), local)
    flip_weights_bit(local)
    for argv in (["pull", local, "--out", tmp_path / "fresh"], ["run", local, "--robot", "sim:kuka-1"],
                 ["eval", local, *EVAL]):
        code, err = fleet(capsys, *argv)
        assert code == 2 and "does not match the content_sha256" in err, (argv[0], err)
    assert snapshot(robot_dir) == before


def widen_and_reseal(directory: Path) -> str:
    edit_manifest(directory, widen_action_bounds)
    return reseal(directory)


PULLED_TAMPERS = {
    "weights changed": (flip_weights_bit, "does not match the content_sha256 in manifest.json"),
    "manifest changed and resealed": (lambda d: edit_manifest(d, widen_action_bounds, reseal=True),
                                      "does not match the digest `fleet pull` verified (pull.json)"),
    "pull.json rewritten too": (lambda d: (d / "pull.json").write_text(
        json.dumps({"content_sha256": widen_and_reseal(d)})), "the pulled policy was changed after the pull"),
    "pull.json removed": (lambda d: (d / "pull.json").unlink(), "has no pull.json"),
}


@pytest.mark.parametrize("case", list(PULLED_TAMPERS))
def test_pulled_directory_modified_after_pull(case, robot_dir, capsys):
    tamper, message = PULLED_TAMPERS[case]
    assert fleet(capsys, "run", robot_dir, "--robot", "sim:kuka-1")[0] == 0
    last_good = snapshot(robot_dir)["policy.last-good"]
    tamper(robot_dir.resolve())
    code, err = fleet(capsys, "run", robot_dir, "--robot", "sim:kuka-1")
    assert code == 2 and message in err, err
    assert snapshot(robot_dir)["policy.last-good"] == last_good
    assert fleet(capsys, "run", robot_dir.with_name("policy.last-good"), "--robot", "sim:kuka-1")[0] == 0


def test_a_new_pull_repairs_a_modified_stored_copy(robot_dir, capsys):
    flip_weights_bit(robot_dir.resolve())
    assert fleet(capsys, "pull", "models:/smoke/2", "--out", robot_dir)[0] == 0
    assert fleet(capsys, "run", robot_dir, "--robot", "sim:kuka-1")[0] == 0


# ------------------------------------------------------------------------------------ the canary
@pytest.fixture
def canary(store, tmp_path):
    """A plugin module in the working directory that leaves a marker when imported, named as the task
    family of a registered version (`canary/1`, valid digest) and of a local copy."""
    marker = tmp_path / "canary-was-imported"
    (tmp_path / f"{CANARY}.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Family:\n    pass\n")
    artifact = PolicyArtifact.load(source_dir(store, "smoke", "1"))
    family = f"{CANARY}:Family"
    artifact.manifest = {**artifact.manifest, "family": family,
                         "fleet": {**artifact.manifest["fleet"], "family": family, "curriculum": f"{CANARY}:c"}}
    from deploy.registry import Registry

    client = MlflowClient(store, store)
    experiment = client.get_run(client.get_model_version("smoke", "1").run_id).info.experiment_id
    run_id = client.create_run(experiment).info.run_id
    Registry(store).publish("canary", artifact, run_id)
    local = tmp_path / "canary-local"
    artifact.save(local)
    yield marker, local, run_id
    sys.modules.pop(CANARY, None)


def test_no_command_imports_a_plugin_named_in_a_manifest(canary, tmp_path, capsys):
    marker, local, run_id = canary
    refused = {
        "eval": ["eval", "models:/canary/1", *EVAL],
        "eval (local)": ["eval", local, *EVAL],
        "promote": ["promote", "canary", "--version", "1", "--episodes", "1", "--tasks", "1"],
        "adapt": ["adapt", "models:/canary/1", "--robot", "sim:kuka-9", "--episodes", "1"],
        "eval, wrong --allow-plugin": ["eval", local, *EVAL, "--allow-plugin", "other:Family"],
        "run (pulled)": ["run", tmp_path / "pulled", "--robot", "sim:kuka-1"],
    }
    assert fleet(capsys, "pull", "models:/canary/1", "--out", tmp_path / "pulled")[0] == 0  # data only: allowed
    for name, argv in refused.items():
        code, err = fleet(capsys, *argv)
        assert code == 2 and CANARY in err and ("--allow-plugin" in err or "family=" in err), (name, err)
    edit_manifest(local, lambda m: m.update(version="tampered"))  # tampered: refused on the digest, first
    allowed = ["--allow-plugin", f"{CANARY}:Family"]
    for argv in (["eval", local, *EVAL, *allowed], ["pull", local, "--out", tmp_path / "p"]):
        code, err = fleet(capsys, *argv)
        assert code == 2 and "does not match the content_sha256" in err, err
    import mlflow

    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/policy")  # MLflow serving loads the policy alone
    assert model.predict(__import__("numpy").zeros((1, 20), "float32")).shape == (1, 3)
    assert not marker.exists() and CANARY not in sys.modules


def test_the_canary_is_live_and_allow_plugin_is_the_way_in(canary, capsys):
    marker, local, _ = canary
    code, err = fleet(capsys, "eval", local, *EVAL, "--allow-plugin", f"{CANARY}:Family")
    assert marker.exists()  # allowed by the user: imported (and then refused: Family is no task family)
    assert code == 2 and "missing required attribute" in err


def test_tampered_serving_files_are_refused(canary, store):
    import mlflow

    _, _, run_id = canary
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/policy"))
    policy = next(p.parent for p in local.rglob("manifest.json"))
    edit_manifest(policy, widen_action_bounds, reseal=True)
    with pytest.raises(Exception, match="does not match the digest recorded in the serving model's MLmodel"):
        mlflow.pyfunc.load_model(str(local))
