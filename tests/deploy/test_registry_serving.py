"""Every registered version is an MLflow model that MLflow serves with metafleet's loader (deploy/mlflow_model.py),
verified like `fleet pull`; the fleet commands still read the same two files and execute nothing."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from deploy.mlflow_model import LOADER_MODULE
from deploy.registry import Registry
from deploy.serving import PolicyModel
from metafleet.cli import main
from policy import NumpyGaussianPolicy, PolicySpec, PolicyWeights
from policy.artifact import DIGEST_KEY, MANIFEST_FILE, WEIGHTS_FILE, PolicyArtifact
from tests.deploy.conftest import source_dir
from tests.deploy.tamper import edit_manifest, flip_weights_bit, widen_action_bounds
from tests.fakes import free_ports, make_policy_dir

NAME = "reach-maml"
OBS = np.random.default_rng(3).normal(size=(4, 20)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A private sqlite store: a tiny meta-policy (v1 @production) and an adapted child (@robot-kuka-7), both
    published through Registry.publish as `fleet train` / `fleet adapt` do,."""
    home = tmp_path_factory.mktemp("served")
    uri = f"sqlite:///{home}/mlflow.db"
    registry = Registry(uri)
    experiment = registry.client.create_experiment("serving-test", artifact_location=str(home / "artifacts"))
    meta = PolicyArtifact.load(make_policy_dir(home / "meta"))
    run_id = registry.client.create_run(experiment).info.run_id
    registry.publish(NAME, meta, run_id, {"kind": "meta-policy"}, aliases=("production",))
    adapted = PolicyArtifact.load(make_policy_dir(home / "adapted", head_scale=0.5))
    adapted.manifest = {**adapted.manifest, "kind": "adapted-policy",
                        "lineage": {"parent_model": NAME, "parent_version": "1", "robot_id": "kuka-7"}}
    adapt_run = registry.client.create_run(experiment).info.run_id
    registry.publish(f"{NAME}-adapted", adapted, adapt_run, {"kind": "adapted-policy"}, aliases=("robot-kuka-7",))
    return SimpleNamespace(uri=uri, home=home, run_id=run_id, meta=PolicyArtifact.load(home / "meta"),
                           adapted=registry.load(f"models:/{NAME}-adapted@robot-kuka-7"))


def _use_store(mp, uri: str) -> None:
    """Point MLflow at ``uri`` for this test only: the environment (subprocesses) and the process-wide URIs an
    earlier test may have set (``mlflow.set_tracking_uri`` also pins them)."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
    mp.setattr(tracking_utils, "_tracking_uri", None)
    mp.setattr(registry_utils, "_registry_uri", None)


@pytest.fixture
def served(tiny, monkeypatch, tmp_path):
    _use_store(monkeypatch, tiny.uri)
    monkeypatch.chdir(tmp_path)
    return tiny


def load_model(uri: str):
    import mlflow

    return mlflow.pyfunc.load_model(uri)


# ------------------------------------------------------------------------------------ the layout
@pytest.mark.parametrize("name,version", [(NAME, "1"), (f"{NAME}-adapted", "1")])
def test_registered_version_is_an_mlflow_model_with_metafleets_loader(served, name, version, tmp_path):
    source = source_dir(served.uri, name, version)
    mlmodel = yaml.safe_load((source / "MLmodel").read_text())
    pyfunc = mlmodel["flavors"]["python_function"]
    assert pyfunc["loader_module"] == LOADER_MODULE == "deploy.mlflow_model"
    assert pyfunc["data"] == "." and not pyfunc.get("code") and "python_model" not in pyfunc
    assert "model_code_path" not in pyfunc and "artifacts" not in pyfunc
    files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle", ".py", ".pt", ".pth"))], files
    assert {WEIGHTS_FILE, MANIFEST_FILE, "MLmodel", "input_example.json", "serving_input_example.json"} <= set(files)
    inputs = json.loads(mlmodel["signature"]["inputs"])
    outputs = json.loads(mlmodel["signature"]["outputs"])
    assert inputs == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 20]}}]
    assert outputs == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 3]}}]
    example = json.loads((source / "serving_input_example.json").read_text())
    assert np.asarray(example["inputs"]).shape == (1, 20)
    tags = Registry(served.uri).client.get_model_version(name, version).tags
    assert mlmodel["metadata"]["metafleet"]["content_sha256"] == tags["content_sha256"]
    assert mlmodel["run_id"] == Registry(served.uri).client.get_model_version(name, version).run_id
    fresh = tmp_path / "fresh"  # the two files are byte for byte what PolicyArtifact.save writes
    PolicyArtifact.load(source).save(fresh)
    for file in (WEIGHTS_FILE, MANIFEST_FILE):
        assert (source / file).read_bytes() == (fresh / file).read_bytes()


def test_fleet_pull_and_run_read_the_two_files_only(served, tmp_path, capsys):
    out = tmp_path / "policy"
    assert main(["pull", f"models:/{NAME}@production", "--out", str(out)]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.resolve().iterdir()) == [MANIFEST_FILE, "pull.json", WEIGHTS_FILE]
    assert main(["run", str(out), "--robot", "sim:kuka-1?horizon=5"]) == 0, capsys.readouterr().err
    assert Registry(served.uri).load(f"models:/{NAME}@production").digest == served.meta.digest


# ------------------------------------------------------------------------------------ serving, in process
@pytest.mark.parametrize("uri", [f"models:/{NAME}@production", f"models:/{NAME}/1", "runs:/{run}/policy",
                                 f"models:/{NAME}-adapted@robot-kuka-7"])
def test_pyfunc_predicts_the_numpy_mean_action(served, uri):
    artifact = served.adapted if "adapted" in uri else served.meta
    prediction = load_model(uri.format(run=served.run_id)).predict(OBS)
    expected = np.clip(NumpyGaussianPolicy(artifact.weights).mean(OBS), -1, 1)  # served within the action bounds
    assert not np.allclose(expected, 0)
    np.testing.assert_allclose(prediction, expected, rtol=1e-6)


HAND_BUILT = {  # every non-MLP kind, hand-built weights: the registry path for kinds whose requests are columns
    "rl2": (PolicySpec(2, 2, (8,), kind="rl2"), {},
            {"obs": [[0.1, 0.2]], "state": [[]], "prev_action": [[0.0, 0.0]], "prev_reward": [0.0],
             "prev_done": [0.0]}),
    "pearl": (PolicySpec(2, 2, (8,), "relu", "pearl", "concat", 2), {}, {"obs": [[0.1, 0.2]], "z": [[0.5, -0.5]]}),
    "film": (PolicySpec(2, 2, (8,), conditioning="film", context_dim=3),
             {"conditioning": {"mode": "film", "encoding": "onehot", "train_tasks": [
                 {"family": "point", "task_id": f"point/train/{i}", "params": {"goal": [i, -i]}} for i in range(3)]}},
             {"obs": [[0.1, 0.2]], "task": ['{"goal": [1, -1]}']}),
    "rma": (PolicySpec(2, 2, (8,), conditioning="film", context_dim=2, kind="rma", model_sizes=(4,), privileged_dim=3,
                       history=2, encoder_sizes=(4,)), {},
            {"obs": [[0.1, 0.2]], "state": [[]], "prev_action": [[0.0, 0.0]], "prev_reward": [0.0],
             "prev_done": [0.0]}),
}


@pytest.mark.parametrize("kind", list(HAND_BUILT))
def test_every_kind_registers_as_a_servable_mlflow_model(kind, served):
    import pandas as pd

    spec, manifest, body = HAND_BUILT[kind]
    rng = np.random.default_rng(1)
    arrays = {k: rng.normal(0, 0.5, shape).astype(np.float32) for k, shape in spec.weight_shapes().items()}
    arrays["obs_std"] = np.ones(2, np.float32)
    if spec.kind == "rma":
        arrays["rma.mode"] = np.ones(1, np.float32)  # adaptive: the published weights, a recurrent history state
    spaces = {"observation": {"shape": [2], "low": [-2, -2], "high": [2, 2]},
              "action": {"shape": [2], "low": [-1, -1], "high": [1, 1]}}
    artifact = PolicyArtifact.build(PolicyWeights(spec, arrays), spaces=spaces, fleet={"family": "point", "horizon": 4},
                                    **manifest)
    registry = Registry(served.uri)
    run_id = registry.client.create_run(registry.client.get_run(served.run_id).info.experiment_id).info.run_id
    version = registry.publish(f"kind-{kind}", artifact, run_id)
    mlmodel = yaml.safe_load((source_dir(served.uri, f"kind-{kind}", version) / "MLmodel").read_text())
    assert mlmodel["flavors"]["python_function"]["loader_module"] == LOADER_MODULE and mlmodel["signature"]["inputs"]
    out = load_model(f"models:/kind-{kind}/{version}").predict(pd.DataFrame(body))
    expected = PolicyModel.from_artifact(registry.load(f"models:/kind-{kind}/{version}")).predict(None, body)
    np.testing.assert_allclose(out["action"], expected["action"], atol=1e-6)
    if "state" in body:  # state out, then back in with the next request
        np.testing.assert_allclose(out["state"], expected["state"], atol=1e-6)
        again = {**body, "state": out["state"], "prev_action": out["action"]}
        np.testing.assert_allclose(load_model(f"models:/kind-{kind}/{version}").predict(pd.DataFrame(again))["action"],
                                   PolicyModel.from_artifact(artifact).predict(None, again)["action"], atol=1e-6)


@contextlib.contextmanager
def tampered(directory: Path, tamper):
    backup = directory.with_name(directory.name + ".backup")
    shutil.copytree(directory, backup)
    try:
        tamper(directory)
        yield
    finally:
        shutil.rmtree(directory)
        shutil.copytree(backup, directory)
        shutil.rmtree(backup)


def rewrite_mlmodel_digest(directory: Path) -> None:
    """What an attacker who knows the layout does after resealing the manifest: record the new digest."""
    mlmodel = yaml.safe_load((directory / "MLmodel").read_text())
    mlmodel["metadata"]["metafleet"]["content_sha256"] = json.loads((directory / MANIFEST_FILE).read_text())[
        DIGEST_KEY]
    (directory / "MLmodel").write_text(yaml.safe_dump(mlmodel))


def drop_mlmodel_digest(directory: Path) -> None:
    mlmodel = yaml.safe_load((directory / "MLmodel").read_text())
    del mlmodel["metadata"]
    (directory / "MLmodel").write_text(yaml.safe_dump(mlmodel))


def reseal_everywhere(directory: Path) -> None:
    edit_manifest(directory, widen_action_bounds, reseal=True)
    rewrite_mlmodel_digest(directory)


SERVING_TAMPERS = {
    "weights changed": (flip_weights_bit, "does not match the content_sha256 in manifest.json"),
    "manifest changed (action bounds widened)": (lambda d: edit_manifest(d, widen_action_bounds),
                                                 "does not match the content_sha256 in manifest.json"),
    "manifest resealed, MLmodel kept": (lambda d: edit_manifest(d, widen_action_bounds, reseal=True),
                                        "does not match the digest recorded in the serving model's MLmodel"),
    "manifest resealed and MLmodel rewritten, registry tag kept": (
        reseal_everywhere, f"does not match the registry tag of models:/{NAME}/1"),
    "MLmodel digest removed": (drop_mlmodel_digest, "records no metadata.metafleet.content_sha256"),
}


@pytest.mark.parametrize("case", list(SERVING_TAMPERS))
def test_tampered_registered_version_is_refused_by_the_serving_loader(case, served):
    tamper, message = SERVING_TAMPERS[case]
    with tampered(source_dir(served.uri, NAME, "1"), tamper), pytest.raises(ValueError, match=message):
        load_model(f"models:/{NAME}@production")
    np.testing.assert_allclose(load_model(f"models:/{NAME}@production").predict(OBS),
                               np.clip(NumpyGaussianPolicy(served.meta.weights).mean(OBS), -1, 1),
                               rtol=1e-6)  # restored


def test_a_copy_of_the_run_is_checked_against_the_versions_registered_from_it(served, tmp_path):
    """A copy of `runs:/<run>/policy` is checked against the tag of the version registered from the run, and
    without a reachable registry the MLmodel's digest is the expectation."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{served.run_id}/policy", dst_path=str(tmp_path)))
    reseal_everywhere(local)
    with pytest.raises(ValueError, match=f"does not match the registry tag of models:/{NAME}/1"):
        load_model(str(local))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/no-such-store.db"  # restored by monkeypatch
    assert load_model(str(local)).predict(OBS).shape == (4, 3)  # no registry here: manifest + MLmodel only
    assert not (tmp_path / "no-such-store.db").exists()


def test_two_file_versions_still_load_in_fleet_but_must_be_republished_to_serve(served, tmp_path):
    """Versions published before the MLflow-model layout: `fleet` loads them; MLflow cannot serve them."""
    from mlflow.exceptions import MlflowException

    registry = Registry(served.uri)
    run_id = registry.client.create_run(registry.client.get_run(served.run_id).info.experiment_id).info.run_id
    old = tmp_path / "old"
    digest = PolicyArtifact.load(served.home / "meta").save(old)
    registry.client.log_artifacts(run_id, str(old), "policy")
    source = f"{registry.client.get_run(run_id).info.artifact_uri}/policy"
    version = registry.client.create_model_version(NAME, source, run_id, tags={"content_sha256": digest}).version
    assert registry.load(f"models:/{NAME}/{version}").digest == digest
    with pytest.raises(MlflowException, match="MLmodel"):
        load_model(f"models:/{NAME}/{version}")
    registry.publish(NAME, registry.load(f"models:/{NAME}/{version}"), run_id)  # re-publishing makes it servable
    assert load_model(f"models:/{NAME}/{int(version) + 1}").predict(OBS).shape == (4, 3)


# ------------------------------------------------------------------------------------ mlflow models serve
def serve(uri: str, cwd: Path):
    (port,) = free_ports(1)
    log = open(cwd / "serve.log", "w")  # noqa: SIM115 - closed by the caller's finally
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port)]
    return subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True), port, log


def invoke(server, port: int, obs: np.ndarray, log_path: Path) -> np.ndarray:
    body = json.dumps({"inputs": obs.tolist()}).encode()
    deadline = time.monotonic() + 120
    while True:
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                             {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=5) as response:
                return np.asarray(json.load(response)["predictions"], dtype=np.float32)
        except OSError:
            assert time.monotonic() < deadline and server.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.5)


@pytest.mark.slow
def test_mlflow_models_serve_a_registry_alias_of_a_trained_and_promoted_policy(store, tmp_path, capfd):
    """`fleet train` (the store fixture), `fleet promote --force`, `fleet adapt`; then
    `mlflow models serve -m models:/smoke@production` answers with the numpy policy's mean action."""
    promote = ["promote", "smoke", "--version", "1", "--alias", "production", "--force", "--episodes", "1",
               "--tasks", "1"]
    code, err = main(promote), capfd.readouterr().err
    assert code == 0, err
    code, (out, err) = main(["adapt", "models:/smoke/1", "--robot", "sim:kuka-5", "--episodes", "1", "--json"]), \
        capfd.readouterr()
    assert code == 0, err
    adapted = json.loads(out)
    registry = Registry(store)
    for name, version in (("smoke", "1"), ("smoke-adapted", adapted["version"])):
        mlmodel = yaml.safe_load((source_dir(store, name, version) / "MLmodel").read_text())
        assert mlmodel["flavors"]["python_function"]["loader_module"] == LOADER_MODULE
    child = registry.load(f"models:/smoke-adapted/{adapted['version']}")
    np.testing.assert_allclose(load_model(f"models:/smoke-adapted/{adapted['version']}").predict(OBS),
                               NumpyGaussianPolicy(child.weights).mean(OBS), rtol=1e-6)
    server, port, log = serve("models:/smoke@production", tmp_path)
    try:
        predictions = invoke(server, port, OBS, tmp_path / "serve.log")
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()
    expected = NumpyGaussianPolicy(registry.load("models:/smoke@production").weights).mean(OBS)
    assert predictions.shape == (4, 3)
    np.testing.assert_allclose(predictions, expected, rtol=1e-5, atol=1e-6)
