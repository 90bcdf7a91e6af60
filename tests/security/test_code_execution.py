"""Nothing read from a manifest, a registry or a checkpoint chooses code, and nothing unverified is loaded.

Every test drives the real CLI (`metafleet.cli.main`) against a real MLflow sqlite store in tmp. A canary module
in the working directory leaves a marker when it is imported: code named by a manifest or a stored run config
must never be imported unless the operator named it (`--robot ...?family=`, `--allow-plugin`).
"""

import contextlib
import hashlib
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from deploy.connect import _parse_sim, with_sim_defaults
from metafleet.cli import main
from tests.deploy.conftest import ROOT, source_dir
from tests.deploy.tamper import edit_manifest, widen_action_bounds

CANARY = "canary_code_exec"
PLUGIN = f"{CANARY}:Family"
SMOKE = ROOT / "configs/smoke.yaml"
EVAL = ["--backend", "local", "--workers", "1", "--episodes", "1", "--tasks", "1", "--steps", "0"]
DIGEST_TAG = "checkpoint_sha256/"


def fleet(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def smoke_store(tmp_path_factory) -> tuple[str, Path]:
    """configs/smoke.yaml trained once into a private store: models:/smoke/1, its run and checkpoints."""
    home = tmp_path_factory.mktemp("security-store")
    uri = f"sqlite:///{home}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        assert main(["train", str(SMOKE)]) == 0
    return uri, home


@pytest.fixture
def store(smoke_store, monkeypatch, tmp_path) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", smoke_store[0])
    monkeypatch.chdir(tmp_path)
    return smoke_store[0]


@pytest.fixture
def canary(tmp_path, monkeypatch):
    """The canary module in the working directory (tmp_path); yields its marker file."""
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "canary-was-imported"
    (tmp_path / f"{CANARY}.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Family:\n    pass\n"
                                           "def curriculum(iteration, tasks, stats):\n    return None\n")
    yield marker
    sys.modules.pop(CANARY, None)
    while str(tmp_path) in sys.path:  # plugin resolution put the working directory there: the next test's goes first
        sys.path.remove(str(tmp_path))


def imported(marker: Path) -> bool:
    return marker.exists() or CANARY in sys.modules


def policy_copy(store: str, directory: Path, edit=None) -> Path:
    """A local copy of models:/smoke/1, optionally edited and resealed (a valid digest over the edit)."""
    shutil.copytree(source_dir(store, "smoke", "1"), directory)
    if edit is not None:
        edit_manifest(directory, edit, reseal=True)
    return directory


# ------------------------------------------------------------------ 1. `fleet run`: the sim: address
def test_sim_defaults_never_splice_a_value_into_the_address():
    with pytest.raises(ValueError, match="unknown robot model"):
        with_sim_defaults("sim:kuka-1", model=f"kuka_iiwa&family={PLUGIN}")
    parsed = _parse_sim(with_sim_defaults("sim:c-1?horizon=20", family="m.n:F&model=a1", model="half_cheetah"))
    assert parsed["family"] == "m.n:F&model=a1" and parsed["robot"].model == "half_cheetah"  # one value stays one


def test_run_refuses_a_manifest_robot_model_that_is_no_known_model(store, canary, tmp_path, capsys):
    local = policy_copy(store, tmp_path / "policy", lambda m: m["robot"].update(model=f"kuka_iiwa&family={PLUGIN}"))
    code, err = fleet(capsys, "run", local, "--robot", "sim:kuka-1")
    assert code == 2 and "unknown robot model" in err and "kuka_iiwa" in err, err
    assert not imported(canary)


def set_plugin_family(manifest: dict) -> None:
    manifest.update(family=PLUGIN, fleet={**manifest["fleet"], "family": PLUGIN})


def test_run_imports_a_manifest_plugin_only_with_allow_plugin(store, canary, tmp_path, capsys):
    local = policy_copy(store, tmp_path / "policy", set_plugin_family)
    for allow in ([], ["--allow-plugin", "other:Family"]):
        code, err = fleet(capsys, "run", local, "--robot", "sim:kuka-1", *allow)
        assert code == 2 and PLUGIN in err and "--allow-plugin" in err, err
        assert not imported(canary)
    code, err = fleet(capsys, "run", local, "--robot", "sim:kuka-1", "--allow-plugin", PLUGIN)
    assert canary.exists()  # allowed by the operator: imported (then refused: Family is no task family)
    assert code == 2 and "missing required attribute" in err, err


# ------------------------------------------------------------------ 2. `fleet train --resume`
def stored_run(uri: str, **fleet_section) -> str:
    """An MLflow run whose logged config.yaml is configs/smoke.yaml with ``fleet_section`` merged in."""
    config = yaml.safe_load(SMOKE.read_text())
    config["fleet"].update(fleet_section)
    client = MlflowClient(uri, uri)
    run_id = client.create_run(client.create_experiment("stored-config")).info.run_id
    client.log_text(run_id, yaml.safe_dump(config), "config.yaml")
    return run_id


@pytest.mark.parametrize("section", [{"family": PLUGIN}, {"curriculum": f"{CANARY}:curriculum"}],
                         ids=["family", "curriculum"])
def test_resume_never_imports_a_plugin_named_in_the_stored_config(section, mlflow_uri, canary, capsys):
    run_id = stored_run(mlflow_uri, **section)
    for allow in ([], ["--allow-plugin", "other:Family"]):
        code, err = fleet(capsys, "train", "--resume", run_id, *allow)
        assert code == 2 and CANARY in err and "--allow-plugin" in err, err
        assert not imported(canary)


def test_resume_allow_plugin_is_the_way_in(mlflow_uri, canary, capsys):
    code, err = fleet(capsys, "train", SMOKE, "--allow-plugin", PLUGIN)  # the operator's own CONFIG needs none
    assert code == 2 and "--allow-plugin goes with --resume RUN_ID and no CONFIG" in err, err
    code, err = fleet(capsys, "train", "--resume", stored_run(mlflow_uri, family=PLUGIN), "--allow-plugin", PLUGIN)
    assert canary.exists()  # allowed by the operator: imported (then refused: Family is no task family)
    assert code == 2 and "missing required attribute" in err, err


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_state(client: MlflowClient, run_id: str) -> tuple:
    """What a refused resume must leave as it was: the run's status, tags and registered versions."""
    run = client.get_run(run_id)
    return run.info.status, dict(run.data.tags), len(client.search_model_versions(f"run_id = '{run_id}'"))


@contextlib.contextmanager
def changed_checkpoint(path: Path):
    """Rewrite a checkpoint as a valid torch file holding other state (as an attacker would); undo afterwards."""
    original = path.read_bytes()
    state = torch.load(path, weights_only=True)
    state["env_steps"] = 10 ** 9
    torch.save(state, path)
    try:
        yield path
    finally:
        path.write_bytes(original)


@pytest.mark.parametrize("where", ["local checkpoint", "MLflow copy"])
def test_resume_refuses_a_checkpoint_changed_after_it_was_saved(where, smoke_store, monkeypatch, tmp_path, capsys):
    uri, home = smoke_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # no local checkpoints here: the resume reads the run's MLflow copy
    client = MlflowClient(uri, uri)
    run_id = client.get_model_version("smoke", "1").run_id
    if where == "local checkpoint":
        shutil.copytree(home / "checkpoints" / run_id, tmp_path / "checkpoints" / run_id)
        newest = tmp_path / "checkpoints" / run_id / "ckpt-00000002.pt"
    else:
        newest = Path(client.get_run(run_id).info.artifact_uri) / "checkpoints" / "ckpt-00000002.pt"
    before = run_state(client, run_id)
    with changed_checkpoint(newest):
        code, err = fleet(capsys, "train", "--resume", run_id)
    assert code == 2 and "does not match the sha256" in err and run_id in err and "resume refused" in err, err
    assert run_state(client, run_id) == before


def test_resume_refuses_checkpoints_without_a_recorded_digest(smoke_store, monkeypatch, tmp_path, capsys):
    uri, _ = smoke_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    client = MlflowClient(uri, uri)
    run_id = client.get_model_version("smoke", "1").run_id
    digests = {k: v for k, v in client.get_run(run_id).data.tags.items() if k.startswith(DIGEST_TAG)}
    assert digests, "every checkpoint's sha256 is recorded in its run"
    for key in digests:
        client.delete_tag(run_id, key)
    try:
        before = run_state(client, run_id)
        code, err = fleet(capsys, "train", "--resume", run_id)
        assert code == 2 and "records no sha256" in err and "resume refused" in err, err
        assert run_state(client, run_id) == before
    finally:
        for key, value in digests.items():
            client.set_tag(run_id, key, value)


def test_resume_verifies_each_checkpoint_and_still_falls_back_past_a_torn_one(mlflow_uri, tmp_path, capsys):
    assert main(["train", str(SMOKE)]) == 0
    client = MlflowClient(mlflow_uri, mlflow_uri)
    run_id = client.get_model_version("smoke", "1").run_id
    local = tmp_path / "checkpoints" / run_id
    tags = client.get_run(run_id).data.tags
    for path in local.iterdir():
        assert tags[DIGEST_TAG + path.name] == sha256_file(path), path.name
    newest = local / "ckpt-00000002.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # a torn file: unreadable, skipped as before
    capsys.readouterr()
    code, err = fleet(capsys, "train", "--resume", run_id)
    assert code == 0, err
    assert f"resumed from {Path('checkpoints') / run_id / 'ckpt-00000001.pt'} at iteration 1" in err
    assert "skipped unreadable" in err


# ------------------------------------------------------------------ 3. registry digests and pull records
@pytest.fixture(scope="module")
def untagged(smoke_store) -> str:
    """models:/untagged/1: the files of models:/smoke/1 in a run of their own, registered without the
    content_sha256 tag (as a version made outside `fleet train` / `Registry.publish` is); yields that run's id."""
    uri, _ = smoke_store
    client = MlflowClient(uri, uri)
    smoke = client.get_model_version("smoke", "1")
    run = client.create_run(client.get_run(smoke.run_id).info.experiment_id)
    client.log_artifacts(run.info.run_id, smoke.source, "policy")
    client.create_registered_model("untagged")
    client.create_model_version("untagged", source=f"{run.info.artifact_uri}/policy", run_id=run.info.run_id)
    return run.info.run_id


def test_a_version_without_a_registry_digest_is_refused(store, untagged, tmp_path, capsys):
    commands = {
        "pull": ["pull", "models:/untagged/1", "--out", tmp_path / "fresh"],
        "pull runs:/": ["pull", f"runs:/{untagged}/policy", "--out", tmp_path / "fresh-run"],
        "eval": ["eval", "models:/untagged/1", *EVAL],
        "promote": ["promote", "untagged", "--version", "1", "--episodes", "1", "--tasks", "1"],
        "adapt": ["adapt", "models:/untagged/1", "--robot", "sim:kuka-9", "--episodes", "1"],
    }
    for name, argv in commands.items():
        code, err = fleet(capsys, *argv)
        assert code == 2 and "no content_sha256 tag" in err and "fleet promote" in err and "re-publish" in err, \
            (name, err)
    assert not (tmp_path / "fresh").exists() and not (tmp_path / "fresh-run").exists()


@pytest.fixture(scope="module")
def unregistered(smoke_store) -> str:
    """A run holding the files of models:/smoke/1 under `policy/` (its manifest's own digest intact) from which
    no version was ever registered, as a run logged outside `Registry.publish` is; yields the run's id."""
    uri, _ = smoke_store
    client = MlflowClient(uri, uri)
    smoke = client.get_model_version("smoke", "1")
    run = client.create_run(client.get_run(smoke.run_id).info.experiment_id)
    client.log_artifacts(run.info.run_id, smoke.source, "policy")
    return run.info.run_id


def test_a_run_artifact_no_version_vouches_for_is_refused(store, unregistered, tmp_path, capsys):
    uri = f"runs:/{unregistered}/policy"
    commands = {"pull": ["pull", uri, "--out", tmp_path / "fresh"], "eval": ["eval", uri, *EVAL],
                "adapt": ["adapt", uri, "--robot", "sim:kuka-9", "--episodes", "1"]}
    for name, argv in commands.items():
        code, err = fleet(capsys, *argv)
        assert code == 2 and "no registered version" in err and "fleet promote" in err, (name, err)
        assert "Traceback" not in err
    assert not (tmp_path / "fresh").exists()
    smoke_run = MlflowClient(store, store).get_model_version("smoke", "1").run_id
    code, err = fleet(capsys, "pull", f"runs:/{smoke_run}/policy", "--out", tmp_path / "registered")
    assert code == 0, err  # the documented runs:/ID/policy of a registered version still pulls


def reseal_widened(directory: Path) -> None:
    edit_manifest(directory, widen_action_bounds, reseal=True)


def copied_out_and_resealed(directory: Path) -> Path:
    copy = directory.parent.parent / "copied-policy"
    shutil.copytree(directory, copy)
    reseal_widened(copy)
    return copy


PULLED_TAMPERS = {
    "manifest changed and resealed": (reseal_widened, "does not match the digest `fleet pull` verified (pull.json)"),
    "pull.json removed": (lambda d: (d / "pull.json").unlink(), "has no pull.json"),
    "copied out of the store, then resealed": (copied_out_and_resealed,
                                               "does not match the digest `fleet pull` verified (pull.json)"),
}


@pytest.mark.parametrize("case", list(PULLED_TAMPERS))
def test_every_load_of_a_pulled_directory_checks_its_pull_record(case, store, tmp_path, capsys):
    tamper, message = PULLED_TAMPERS[case]
    out = tmp_path / "policy"
    assert fleet(capsys, "pull", "models:/smoke/1", "--out", out)[0] == 0
    target = tamper(out.resolve()) or out
    for argv in (["eval", target, *EVAL], ["pull", target, "--out", tmp_path / "re-pulled"],
                 ["adapt", target, "--robot", "sim:kuka-9", "--episodes", "1"]):
        code, err = fleet(capsys, *argv)
        assert code == 2 and message in err, (argv[0], err)
    assert not (tmp_path / "re-pulled").exists()
