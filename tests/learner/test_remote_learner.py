"""Learner placement: an actor-placed learner computes exactly what the in-driver one does; a cluster
with a GPU gets the learner and the workers into one placement group; CPU and CUDA updates agree.

Ray, MLflow and the trainer are imported inside the tests that need them, so the CUDA agreement test also
runs where only torch, numpy, pydantic, gymnasium and pyyaml are installed (benchmarks/gpu_check.sh).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from learner.config import LearnerConfig
from learner.maml import MAML
from tests.fakes import POINT_SPEC, drive_iteration, point_env_factory, point_protocol, point_tasks
from workers.pool import LocalWorkerPool

ROOT = Path(__file__).resolve().parents[2]
TASKS = point_tasks(4, seed=3)
CONFIG = LearnerConfig(hidden_sizes=(32, 32), minibatches=2, ppo_epochs=2, inner_lr=0.3, device="cpu")


def train_iterations(learner, pool, iterations: int = 2, start: int = 0) -> list[dict]:
    """The trainer's calling sequence: each iteration's collect plan through the pool, then update."""
    return [drive_iteration(learner, pool, TASKS, it, episodes=4, horizon=10)[0]
            for it in range(start, start + iterations)]


def assert_states_equal(a: dict, b: dict) -> None:
    for key in ("policy", "normalizer"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(torch.as_tensor(a[key][name]), torch.as_tensor(b[key][name])), f"{key}.{name}"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for index in sa:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa[index][name], sb[index][name]), f"optimizer.{index}.{name}"


@pytest.mark.slow  # ~10-25 s: an actor process starts and imports torch
@pytest.mark.integration
def test_actor_learner_is_bitwise_identical_to_driver_learner(ray_local):
    from learner.builder import place_learner
    from learner.evaluation import evaluate
    from learner.remote import RemoteLearner

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the actor (1 CPU) runs torch on one thread: same kernels, same sums
    try:
        pool = LocalWorkerPool(1, point_env_factory)
        driver = place_learner(POINT_SPEC, CONFIG, TASKS, seed=5)  # placement auto, no GPU: stays here
        assert not isinstance(driver, RemoteLearner)
        remote = place_learner(POINT_SPEC, CONFIG.model_copy(update={"placement": "actor"}), TASKS, seed=5)
        try:
            assert isinstance(remote, RemoteLearner) and remote.info["gpu_ids"] == []
            assert remote.device == torch.device("cpu")
            assert train_iterations(driver, pool) == train_iterations(remote, pool)
            remote_state = remote.state_dict()
            assert "process_rng" in remote_state
            assert_states_equal(driver.state_dict(), remote_state)
            # the evaluation path (theta, then adaptation rounds driven inside the actor)
            protocol = point_protocol(TASKS[:2], episodes=3, horizon=10, seed=1, steps=(0, 1, 2))
            evals = [evaluate(learner, pool, protocol) for learner in (driver, remote)]
            assert evals[0].returns == evals[1].returns
            local = remote.local()
            assert_states_equal(driver.state_dict(), local.state_dict())
            # the actor's own RNG travels with its state: restoring it replays the same minibatch shuffles
            first = train_iterations(remote, pool, 1, start=2)
            remote.load_state_dict(remote_state)
            assert train_iterations(remote, pool, 1, start=2) == first
        finally:
            remote.close()
    finally:
        torch.set_num_threads(threads)


GPU_CLUSTER_SCRIPT = textwrap.dedent("""
    import json, logging, sys
    import ray, torch
    from learner.config import load_config
    from learner.builder import placed_pool, place_learner
    from tests.fakes import POINT_SPEC, point_tasks
    from workers.ray_pool import LOOPBACK, loopback_only

    loopback_only()
    # a logical GPU: Ray schedules by it, torch (CPU build here) sees no CUDA
    ray.init(address="local", num_cpus=3, num_gpus=1, include_dashboard=False, _node_ip_address=LOOPBACK,
             logging_level=logging.WARNING)
    cfg = load_config(data={"workers": {"backend": "ray", "num_workers": 2}, "learner": {"hidden_sizes": [8]}})
    pool, group = placed_pool(cfg)  # 3 CPUs, all reserved by the group: workers start only inside it
    learner = place_learner(POINT_SPEC, cfg.learner, point_tasks(2), seed=0, group=group)
    table = ray.util.placement_group_table(group)
    print(json.dumps({"info": learner.info, "bundles": list(table["bundles"].values()),
                      "strategy": table["strategy"], "workers": len(pool.live_slots),
                      "available_gpu": ray.available_resources().get("GPU", 0.0),
                      "cuda": torch.cuda.is_available()}))
    learner.close(); pool.close(); ray.util.remove_placement_group(group); ray.shutdown()
""")


@pytest.mark.slow
@pytest.mark.integration
def test_cluster_with_a_gpu_places_learner_and_workers_in_one_group(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-c", GPU_CLUSTER_SCRIPT], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["info"]["gpu_ids"] == ["0"]  # the actor holds the (logical) GPU
    assert out["available_gpu"] == 0.0
    assert out["bundles"] == [{"GPU": 1.0, "CPU": 1.0}, {"CPU": 1.0}, {"CPU": 1.0}]
    assert out["strategy"] == "PACK" and out["workers"] == 2
    # torch sees no CUDA here, so `device: auto` falls back to the actor's CPU
    assert out["info"]["device"] == ("cuda:0" if out["cuda"] else "cpu")


def test_placement_driver_never_needs_ray():
    from learner.builder import place_learner

    learner = place_learner(POINT_SPEC, CONFIG.model_copy(update={"placement": "driver"}), TASKS, seed=0)
    assert learner.device == torch.device("cpu") and isinstance(learner, MAML) and learner.local() is learner


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run by benchmarks/gpu_check.sh)")
def test_cpu_and_cuda_updates_agree():
    pool = LocalWorkerPool(1, point_env_factory)
    results = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(11)
        learner = MAML(POINT_SPEC, CONFIG.model_copy(update={"device": device}), TASKS)
        assert learner.device.type == device
        torch.manual_seed(12)  # same minibatch shuffles on both
        metrics = train_iterations(learner, pool)
        state = learner.state_dict()
        results[device] = (metrics, {k: v.detach().cpu() for k, v in state["policy"].items()})
    (cpu_metrics, cpu_params), (gpu_metrics, gpu_params) = results["cpu"], results["cuda"]
    for name, value in cpu_params.items():
        assert torch.allclose(value, gpu_params[name], rtol=1e-3, atol=1e-4), name
    for a, b in zip(cpu_metrics, gpu_metrics):
        assert a["outer_loss"] == pytest.approx(b["outer_loss"], rel=1e-3, abs=1e-4)


class _Tracker:
    run_id = "placement"

    def log_artifact(self, *args, **kwargs) -> None:
        pass


@pytest.mark.slow  # an actor process starts
@pytest.mark.integration
def test_trainer_with_an_actor_learner_checkpoints_into_a_driver_learner(ray_local, tmp_path):
    import numpy as np

    from learner.config import load_config
    from learner.remote import RemoteLearner
    from learner.trainer import Trainer
    from tests.fakes import PointEnv

    class GoalPointEnv(PointEnv):
        def set_task(self, params: dict) -> None:
            self.goal = np.asarray(params["goal"][:2], np.float32) - np.float32(0.3)

    def trainer(placement: str) -> Trainer:
        cfg = load_config(data={
            "fleet": {"num_train_tasks": 4, "num_test_tasks": 2, "horizon": 5},
            "workers": {"backend": "local", "num_workers": 1},
            "learner": {"hidden_sizes": [8], "ppo_epochs": 1, "placement": placement},
            "train": {"meta_batch_size": 2, "episodes_per_task": 2},
            "tracking": {"checkpoint_dir": str(tmp_path)},
        })
        pool = LocalWorkerPool(1, lambda family, robot, horizon: GoalPointEnv(horizon))
        return Trainer(cfg, pool, _Tracker(), POINT_SPEC, {})

    remote = trainer("actor")
    try:
        assert isinstance(remote.learner, RemoteLearner)
        remote.iterate()
        state = remote.state_dict()
        local = trainer("driver")
        local.load_state_dict(state)  # the actor's own RNG state is ignored by an in-driver learner
        assert local.iteration == 1
        assert_states_equal(state["learner"], local.learner.state_dict())
    finally:
        remote.learner.close()
