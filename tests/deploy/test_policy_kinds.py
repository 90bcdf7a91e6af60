"""Every policy kind metafleet trains, through the real CLI: `fleet train` (tiny), `fleet pull`, `fleet run` on a sim
robot and over the TCP bridge (127.0.0.1), `fleet adapt`, PEARL's on-robot adaptation, and the serving model.

One tiny training per kind (configs/smoke.yaml, horizon 10; the belief policy: configs/reach.yaml, the main job, and
the RMA policy: configs/robots-arm.yaml, the arm exam, both cut to a tiny budget with in-process workers) in a
private sqlite store, shared by the module. The RMA policy runs on a held-out robot of its fleet file
(`sim:kuka-new-3?fleet_file=...`).
"""

import json
import os

import numpy as np
import pandas as pd
import pytest

from deploy.bridge_server import RobotServer
from deploy.serving import PolicyModel, serving_signature
from deploy.sim_robot import SimRobot
from fleet.fleetspec import load_fleet_file
from fleet.robots import RobotSpec
from learner.builder import task_distribution
from learner.config import load_config
from metafleet.cli import main
from policy.artifact import PolicyArtifact
from tests.deploy.conftest import ROOT

pytestmark = pytest.mark.slow

SMOKE = str(ROOT / "configs/smoke.yaml")
REACH = str(ROOT / "configs/reach.yaml")
ARM = str(ROOT / "configs/robots-arm.yaml")
GAINS = str(ROOT / "configs/fleets/kuka-gains.yaml")
HELD_OUT = f"sim:kuka-new-3?fleet_file={GAINS}"  # a held-out robot (split: test) of the RMA policy's fleet
TINY = ["workers.backend=local", "workers.num_workers=1", "fleet.num_train_tasks=8", "fleet.num_test_tasks=4",
        "fleet.horizon=10", "learner.hidden_sizes=[16]", "learner.ppo_epochs=1", "learner.device=cpu",
        "train.iterations=2", "train.meta_batch_size=2", "train.episodes_per_task=1", "train.eval_every=2",
        "train.eval_tasks=1", "train.eval_episodes=1", "train.eval_steps=[0,1]", "train.checkpoint_every=2"]
GOAL = ["--task", "goal=[0.6, 0.1, 0.4]"]
TOKEN = "kinds-token-789"


def mtppo(mode: str, encoding: str) -> list[str]:
    return ["learner.algorithm=mtppo", f"learner.conditioning={mode}", f"learner.task_encoding={encoding}"]


KINDS = {
    "concat": mtppo("concat", "params"),
    "additive": mtppo("additive", "params"),
    "multihead": mtppo("multihead", "onehot"),
    "film": mtppo("film", "params"),
    "rl2": ["learner.algorithm=rl2", "learner.trial_episodes=2", "learner.rl2_hidden=8"],
    "pearl": ["learner.algorithm=pearl", "learner.hidden_sizes=[16]", "learner.latent_dim=2", "learner.batch_size=16",
              "learner.context_size=10", "learner.tasks_per_step=2", "learner.gradient_steps=2",
              "learner.buffer_size=200", "learner.prior_episodes=1", "learner.posterior_episodes=1"],
    "mixture": ["fleet.family={velocity: 1.0, direction: 2.0}", "fleet.robot=half_cheetah", "fleet.robot_id=cheetah-0"],
    "belief": [*TINY, "learner.model_sizes=[16]", "learner.model_steps=5", "learner.model_episodes=1",
               "learner.belief_particles=32"],
    "rma": [*TINY, f"fleet.fleet_file={GAINS}", "learner.rma.latent=2", "learner.rma.history=3",
            "learner.rma.adapt_from=1", "learner.rma.adapt_steps=5", "learner.rma.adapt_batch=64",
            "learner.rma.adapt_sizes=[16]", "learner.rma.encoder_sizes=[8]", "train.robot_agnostic=false"],
}
CONFIG = {"belief": REACH, "rma": ARM}  # the rest: SMOKE
BELIEF_STATE = 32 * 3 + 32 + 3 + 1 + 20  # particles x task vector, log-weights, z, step, previous obs
RMA_STATE = 3 * (23 + 7) + 23 + 1  # history x [obs, action], previous obs, steps so far
CONDITIONED = ("concat", "additive", "multihead", "film")


def task_args(kind: str) -> list[str]:
    return ["--task", "family=velocity", "--task", "speed=1.0"] if kind == "mixture" else GOAL


def robot_address(kind: str, robot_id: str = "kuka-0") -> str:
    """The sim robot a kind runs on: a cheetah for the mixture, a held-out KUKA of its fleet file for RMA."""
    return {"mixture": "sim:c-1", "rma": HELD_OUT}.get(kind, f"sim:{robot_id}")


@pytest.fixture(scope="module")
def kinds_store(tmp_path_factory):
    home = tmp_path_factory.mktemp("kinds")
    uri = f"sqlite:///{home}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("METAFLEET_ROBOT_TOKEN", TOKEN)
        yield home, {}


@pytest.fixture
def pulled(kinds_store):
    """kind -> pulled policy directory (trained and pulled on first use)."""
    home, cache = kinds_store

    def get(kind: str) -> str:
        if kind not in cache:
            sets = [a for s in KINDS[kind] for a in ("--set", s)]
            config = CONFIG.get(kind, SMOKE)
            assert main(["train", config, "--set", f"tracking.registered_model=kinds-{kind}", *sets]) == 0
            out = str(home / f"pulled-{kind}")
            assert main(["pull", f"models:/kinds-{kind}@candidate", "--out", out]) == 0
            cache[kind] = out
        return cache[kind]

    return get


def run_json(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main(["run", *argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("kind", CONDITIONED)
def test_conditioned_policies_run_with_the_training_task_vectors(kind, pulled, capsys):
    path = pulled(kind)
    manifest = PolicyArtifact.load(path).manifest
    train = task_distribution(load_config(SMOKE)).tasks("train")  # what MT-PPO trained on, in its order
    section = manifest["conditioning"]
    assert section["mode"] == kind and [t["task_id"] for t in section["train_tasks"]] == [t.task_id for t in train]
    held_out = run_json(capsys, path, "--robot", "sim:kuka-0", "--episodes", "2", *GOAL)
    assert held_out["conditioning"] == kind and held_out["task_held_out"] is True
    assert [e["steps"] for e in held_out["episodes"]] == [10, 10]
    goal = train[3].params["goal"]
    trained = run_json(capsys, path, "--robot", "sim:kuka-0", "--task", f"goal={json.dumps(goal)}")
    assert trained["task_held_out"] is False
    if section["encoding"] == "onehot":
        assert trained["task_vector"] == np.eye(len(train))[3].tolist()
        assert held_out["task_vector"] == pytest.approx([1 / len(train)] * len(train))
    else:
        expected = (np.asarray([0.6, 0.1, 0.4]) - section["mean"]) / np.asarray(section["std"])
        assert held_out["task_vector"] == pytest.approx(expected.tolist(), rel=1e-5)
    assert main(["run", path, "--robot", "sim:kuka-0"]) == 2  # no task: refused, naming the params
    assert "name the task, e.g. --task KEY=VALUE for each of its params ['goal']" in capsys.readouterr().err


def test_rl2_carries_its_state_over_the_trial_and_resets_it(pulled, capsys):
    path = pulled("rl2")
    out = run_json(capsys, path, "--robot", "sim:kuka-0", "--episodes", "5", *GOAL)
    assert out["trial_episodes"] == 2 and [e["trial_episode"] for e in out["episodes"]] == [1, 2, 1, 2, 1]
    out = run_json(capsys, path, "--robot", "sim:kuka-0", "--episodes", "3", "--trial-episodes", "3", *GOAL)
    assert [e["trial_episode"] for e in out["episodes"]] == [1, 2, 3]
    assert main(["run", pulled("concat"), "--robot", "sim:kuka-0", "--trial-episodes", "2", *GOAL]) == 2
    assert "--trial-episodes applies to recurrent policies" in capsys.readouterr().err


def test_pearl_adapts_on_the_robot_and_reports_before_after_and_latency(pulled, capsys):
    path = pulled("pearl")
    out = run_json(capsys, path, "--robot", "sim:kuka-0", "--adapt", "--episodes", "3", "--eval-episodes", "2", *GOAL)
    adaptation = out["adaptation"]
    assert len(adaptation["context_episodes"]) == 3 and adaptation["transitions"] == 30
    assert len(adaptation["before"]) == 2 and len(out["episodes"]) == 2 and out["z_from"] == "posterior"
    assert 0 < adaptation["infer_s"] < adaptation["adapt_s"] < 60 and out["z"] == pytest.approx(adaptation["z"])
    assert out["mean_return"] == pytest.approx(adaptation["return_after"])
    assert [e["seed"] for e in adaptation["before"]] == [e["seed"] for e in out["episodes"]] == [3, 4]
    assert main(["run", path, "--robot", "sim:kuka-0", "--adapt", "--episodes", "1", *GOAL]) == 0
    text = capsys.readouterr().out
    assert "adaptation: 1 context episode(s), 10 transitions: collect" in text and "return before (z from" in text
    assert main(["run", pulled("rl2"), "--robot", "sim:kuka-0", "--adapt", *GOAL]) == 2
    assert "--adapt infers a task latent on the robot: it needs a PEARL" in capsys.readouterr().err


def test_belief_adapts_on_the_robot_and_reports_before_after_and_latency(pulled, capsys):
    path = pulled("belief")
    out = run_json(capsys, path, "--robot", "sim:kuka-0", "--adapt", "--episodes", "3", "--eval-episodes", "2", *GOAL)
    adaptation = out["adaptation"]
    assert len(adaptation["context_episodes"]) == 3 and adaptation["transitions"] == adaptation["policy_steps"] == 30
    assert [e["trial_episode"] for e in adaptation["context_episodes"]] == [1, 2, 3]  # one trial (not 2 as trained)
    assert [e["trial_episode"] for e in adaptation["before"]] == [1, 1]  # a fresh belief each
    assert [e["trial_episode"] for e in out["episodes"]] == [4, 4]  # each from the belief the context left
    assert [e["seed"] for e in adaptation["before"]] == [e["seed"] for e in out["episodes"]] == [3, 4]
    assert 0 < adaptation["infer_s"] < adaptation["collect_s"] < 60 and adaptation["policy_ms_per_step"] > 0
    assert len(adaptation["mu"]) == len(adaptation["std"]) == 3
    assert out["mean_return"] == pytest.approx(adaptation["return_after"])
    assert main(["run", path, "--robot", "sim:kuka-0", "--adapt", "--episodes", "1", *GOAL]) == 0
    text = capsys.readouterr().out
    assert "adaptation: 1 context episode(s), 10 steps, belief updated every step" in text and "ms/step" in text
    assert "return before (fresh belief)" in text


def test_rma_runs_adapts_and_evaluates_on_held_out_robots_of_its_fleet(pulled, capsys):
    path = pulled("rma")
    out = run_json(capsys, path, "--robot", HELD_OUT, "--episodes", "2", *GOAL)
    assert out["policy_kind"] == "rma" and out["family"] == "robot_reach" and out["z_from"] == "history"
    assert [e["steps"] for e in out["episodes"]] == [10, 10] and out["policy_ms_per_step"] > 0
    out = run_json(capsys, path, "--robot", HELD_OUT, "--adapt", "--episodes", "2", "--eval-episodes", "2", *GOAL)
    adaptation = out["adaptation"]
    assert adaptation["transitions"] == adaptation["policy_steps"] == 20 and len(adaptation["z"]) == 2
    assert out["z_from"] == "adapted" and out["mean_return"] == pytest.approx(adaptation["return_after"])
    assert [e["seed"] for e in adaptation["before"]] == [e["seed"] for e in out["episodes"]] == [2, 3]
    assert main(["run", path, "--robot", f"sim:kuka-new-10?fleet_file={GAINS}", *GOAL]) == 2
    assert "holds no robot 'kuka-new-10'" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["eval", "models:/kinds-rma@candidate", "--backend", "local", "--workers", "1", "--tasks", "2",
                 "--episodes", "1", "--steps", "0,1"]) == 0
    assert "on 2 test tasks" in capsys.readouterr().out


def test_mixture_runs_the_named_family_or_the_manifests_default(pulled, capsys):
    path = pulled("mixture")
    assert PolicyArtifact.load(path).manifest["default_family"] == "direction"  # the heaviest
    assert run_json(capsys, path, "--robot", "sim:c-1")["family"] == "direction"
    assert run_json(capsys, path, "--robot", "sim:c-1", *task_args("mixture"))["family"] == "velocity"
    assert main(["run", path, "--robot", "sim:c-1", "--task", "family=reach"]) == 2
    assert "unknown family 'reach': the policy was trained on ['direction', 'velocity']" in capsys.readouterr().err


@pytest.mark.parametrize("kind", [*CONDITIONED, "rl2", "pearl", "mixture", "belief", "rma"])
def test_the_tcp_bridge_runs_every_kind_as_the_sim_does(kind, pulled, capsys):
    path = pulled(kind)
    family, spec = {"mixture": ("velocity", RobotSpec(model="half_cheetah")),
                    "rma": ("robot_reach", load_fleet_file(GAINS).test[3])}.get(kind, ("reach", RobotSpec()))
    served = SimRobot(family, spec, horizon=10)
    server = RobotServer(served, TOKEN, host="127.0.0.1").start()
    try:
        robot = robot_address(kind)
        direct = run_json(capsys, path, "--robot", robot, "--episodes", "3", *task_args(kind))
        remote = run_json(capsys, path, "--robot", f"tcp://127.0.0.1:{server.address[1]}", "--episodes", "3",
                          *task_args(kind))
    finally:
        server.stop()
        served.close()
    assert [e["return"] for e in remote["episodes"]] == pytest.approx([e["return"] for e in direct["episodes"]])
    assert remote["policy_kind"] == direct["policy_kind"]


def request(kind: str, artifact: PolicyArtifact) -> pd.DataFrame:
    obs = np.asarray(artifact.weights.arrays["obs_mean"], np.float64).tolist()
    if kind in CONDITIONED:
        trained = artifact.manifest["conditioning"]["train_tasks"][2]["params"]  # one-hot: held out vs trained
        return pd.DataFrame({"obs": [obs, obs], "task": ['{"goal": [0.6, 0.1, 0.4]}', json.dumps(trained)]})
    if kind in ("rl2", "belief", "rma"):
        act_dim = artifact.weights.spec.act_dim
        return pd.DataFrame({"obs": [obs], "state": [[]], "prev_action": [[0.0] * act_dim], "prev_reward": [0.0],
                             "prev_done": [0.0]})
    if kind == "pearl":
        return pd.DataFrame({"obs": [obs], "z": [[0.5, -0.5]]})
    return pd.DataFrame({"obs": [obs], "task": ['{"family": "velocity", "speed": 1.0}']})


@pytest.mark.parametrize("kind", [*CONDITIONED, "rl2", "pearl", "belief", "rma"])
def test_serving_answers_each_kind_through_its_signature(kind, pulled):
    from mlflow.models.utils import _enforce_schema

    artifact = PolicyArtifact.load(pulled(kind))
    signature, example = serving_signature(artifact)
    model = PolicyModel.from_artifact(artifact)
    model.predict(None, _enforce_schema(example, signature.inputs))  # the logged example is a valid request
    out = model.predict(None, _enforce_schema(request(kind, artifact), signature.inputs))
    assert np.asarray(out["action"]).shape[1] == artifact.weights.spec.act_dim and np.isfinite(out["action"]).all()
    if kind == "rl2":
        assert len(out["state"][0]) == 8
    if kind == "rma":  # the robot's own history goes out, and comes back with the next request
        assert len(out["state"][0]) == RMA_STATE
        again = request(kind, artifact).assign(state=[out["state"][0]], prev_action=[out["action"][0]])
        assert len(model.predict(None, _enforce_schema(again, signature.inputs))["state"][0]) == RMA_STATE
    if kind == "belief":  # the particle belief goes out, and comes back with the next request
        assert len(out["state"][0]) == BELIEF_STATE and len(out["belief_mean"][0]) == 3
        again = request(kind, artifact).assign(state=[out["state"][0]], prev_action=[out["action"][0]],
                                               prev_reward=[0.5])
        assert len(model.predict(None, _enforce_schema(again, signature.inputs))["state"][0]) == BELIEF_STATE
    if kind in CONDITIONED:
        assert out["action"][0] != out["action"][1]  # the task changes the action


@pytest.mark.parametrize("kind", ["pearl", *CONDITIONED, "mixture", "belief", "rma"])
def test_fleet_adapt_registers_an_adapted_version_that_runs(kind, pulled, kinds_store, capsys):
    pulled(kind)
    home, _ = kinds_store
    capsys.readouterr()
    robot = "sim:c-5" if kind == "mixture" else robot_address(kind, "kuka-5")
    assert main(["adapt", f"models:/kinds-{kind}@candidate", "--robot", robot, "--episodes", "2", *task_args(kind),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    out = str(home / f"adapted-{kind}")
    assert main(["pull", f"models:/kinds-{kind}-adapted/{result['version']}", "--out", out]) == 0
    manifest = PolicyArtifact.load(out).manifest
    assert manifest["kind"] == "adapted-policy" and manifest["lineage"]["parent_model"] == f"kinds-{kind}"
    ran = run_json(capsys, out, "--robot", robot, *task_args(kind))
    if kind == "pearl":
        assert manifest["lineage"]["adapt_steps"] == 0 and len(manifest["posterior"]["z"]) == 2
        assert ran["z_from"] == "posterior" and ran["z"] == pytest.approx(manifest["posterior"]["z"], rel=1e-6)
        assert result["return_before"] != result["return_after"] or result["success_before"] == 1.0
    elif kind == "mixture":
        assert result["task"] == {"speed": 1.0} and ran["family"] == "velocity"
    elif kind == "belief":  # its actor, the task vector fixed to the belief's mean: runs without --task
        fixed = manifest["conditioning"]["fixed"]["vector"]
        assert manifest["policy"]["kind"] == "mlp" and manifest["lineage"]["adapt_steps"] == 0
        assert fixed == pytest.approx(manifest["belief"]["mean"]) and manifest["belief"]["transitions"] == 20
        bare = run_json(capsys, out, "--robot", robot)
        assert bare["task_vector_from"] == ran["task_vector_from"] == "fixed"
        assert bare["task_vector"] == ran["task_vector"] == pytest.approx(fixed, rel=1e-6)
    elif kind == "rma":  # its actor with z fixed to the mean estimate of the context episodes' 20 steps
        fixed = manifest["conditioning"]["fixed"]["vector"]
        assert manifest["policy"]["kind"] == "mlp" and manifest["conditioning"]["mode"] == "film"
        assert result["robot_id"] == "kuka-new-3" and manifest["lineage"]["adapt_steps"] == 0
        assert fixed == pytest.approx(manifest["rma"]["mean"]) and manifest["rma"]["transitions"] == 20
        bare = run_json(capsys, out, "--robot", robot)
        assert bare["task_vector_from"] == "fixed" and bare["task_vector"] == pytest.approx(fixed, rel=1e-6)
    else:
        assert manifest["conditioning"]["mode"] == kind and ran["task_held_out"] is True
    assert os.path.islink(out)


def test_fleet_adapt_refuses_rl2_saying_it_adapts_in_context(pulled, capsys):
    pulled("rl2")
    assert main(["adapt", "models:/kinds-rl2@candidate", "--robot", "sim:kuka-5", *GOAL]) == 2
    assert "adapts in its hidden state over a trial, not by gradient steps" in capsys.readouterr().err


@pytest.mark.parametrize("kind", [*CONDITIONED, "rl2", "pearl", "mixture", "belief", "rma"])
def test_the_registered_version_serves_each_kind_through_mlflow(kind, pulled):
    import mlflow

    artifact = PolicyArtifact.load(pulled(kind))
    model = mlflow.pyfunc.load_model(f"models:/kinds-{kind}/1")  # verified by the metafleet loader
    body = request(kind, artifact)
    if kind == "mixture":  # a plain MLP: bare observations
        body = np.asarray(artifact.weights.arrays["obs_mean"], np.float32)[None]
    out = model.predict(body)
    expected = PolicyModel.from_artifact(artifact).predict(None, body)
    np.testing.assert_allclose(np.asarray(out["action"] if isinstance(out, dict) else out),
                               np.asarray(expected["action"] if isinstance(expected, dict) else expected), atol=1e-6)


def serve(uri: str, body: dict, timeout: float = 120.0):
    """POST `body` to a real `mlflow models serve -m uri` on 127.0.0.1; the JSON answer."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local", "--host",
           "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                request_ = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(),
                                                  {"Content-Type": "application/json"})
                with urllib.request.urlopen(request_, timeout=10) as response:
                    return json.load(response)
            except urllib.error.HTTPError as exc:
                return {"status": exc.code, "error": exc.read().decode()}
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "mlflow models serve did not come up"
                time.sleep(1)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


@pytest.mark.parametrize("kind", [*CONDITIONED, "rl2", "pearl", "mixture", "belief", "rma"])
def test_mlflow_models_serve_answers_each_kind(kind, pulled):
    """A real `mlflow models serve -m models:/kinds-KIND/1` on 127.0.0.1, with each kind's request."""
    artifact = PolicyArtifact.load(pulled(kind))
    frame = request(kind, artifact)
    if kind == "mixture":  # a plain MLP: bare observations
        obs = np.asarray(artifact.weights.arrays["obs_mean"], np.float32)[None]
        body, expected = {"inputs": obs.tolist()}, PolicyModel.from_artifact(artifact).predict(None, obs)
    else:
        body, expected = {"dataframe_records": frame.to_dict("records")}, \
            PolicyModel.from_artifact(artifact).predict(None, frame)
    answers = serve(f"models:/kinds-{kind}/1", body)
    predictions = answers["predictions"]
    actions = predictions["action"] if isinstance(predictions, dict) else predictions
    np.testing.assert_allclose(actions, expected["action"] if isinstance(expected, dict) else expected, atol=1e-5)
    if kind in ("rl2", "rma"):  # the next state goes out with the answer, to come back with the next request
        np.testing.assert_allclose(predictions["state"], expected["state"], atol=1e-5)
        assert len(predictions["state"][0]) == {"rl2": 8, "rma": RMA_STATE}[kind]
    if kind == "belief":  # the belief state (particles, weights, z, step, previous obs) as one array
        np.testing.assert_allclose(predictions["state"], expected["state"], atol=1e-5)
        assert len(predictions["state"][0]) == BELIEF_STATE
