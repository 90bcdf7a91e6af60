"""RayWorkerPool on a real local Ray: same batches as the local pool, weights put once."""

import numpy as np
import pytest
import torch

from learner.networks import GaussianMLPPolicy
from tests.fakes import POINT_SPEC, ROBOT, point_env_factory, point_tasks
from workers.batch import SampleRequest
from workers.pool import LocalWorkerPool

pytestmark = pytest.mark.integration


def test_ray_pool_equals_local_pool(ray_local):
    from workers.ray_pool import RayWorkerPool

    torch.manual_seed(0)
    weights = GaussianMLPPolicy(POINT_SPEC, init_std=0.5).to_weights("v1")
    reqs = [SampleRequest(t, ROBOT, "v1", 4, 9, 100 + i) for i, t in enumerate(point_tasks(5))]
    local = LocalWorkerPool(1, point_env_factory).sample(reqs, {"v1": weights})
    pool = RayWorkerPool(2, point_env_factory)
    try:
        remote = pool.sample(reqs, {"v1": weights})
        again = pool.sample(reqs, {"v1": weights})
        assert pool.puts == 1  # one ray.put for the version, reused by the second call
        assert {b.worker_id for b in remote} == {0, 1}
        for a, b in zip(local, remote):
            assert a.task == b.task
            np.testing.assert_array_equal(a.obs, b.obs)
            np.testing.assert_array_equal(a.actions, b.actions)
            np.testing.assert_array_equal(a.logp, b.logp)
            np.testing.assert_array_equal(a.rewards, b.rewards)
        assert [b.seq for b in again if b.worker_id == 0] == [4, 5, 6]  # sequence numbers keep counting
    finally:
        pool.close()


def test_ray_pool_on_real_reach_env(ray_local):
    """Real pybullet envs inside Ray actors."""
    from fleet.robots import RobotSpec
    from fleet.tasks import TaskDistribution
    from policy import PolicySpec
    from workers.ray_pool import RayWorkerPool

    tasks = TaskDistribution("reach", 4, 2, seed=0).sample(2, "train")
    import fleet

    env = fleet.make_env("reach", RobotSpec(), 10)
    spec = PolicySpec(env.observation_space.shape[0], env.action_space.shape[0], (16,))
    env.close()
    weights = GaussianMLPPolicy(spec).to_weights("r1")
    reqs = [SampleRequest(t, RobotSpec(), "r1", 2, 10, i) for i, t in enumerate(tasks)]
    pool = RayWorkerPool(2)
    try:
        remote = pool.sample(reqs, {"r1": weights})
    finally:
        pool.close()
    local = LocalWorkerPool(1).sample(reqs, {"r1": weights})
    for a, b in zip(local, remote):
        np.testing.assert_allclose(a.obs, b.obs)
        assert b.num_steps == 20 and np.isfinite(b.rewards).all()


def test_local_ray_listens_on_loopback_only(ray_local):
    """Every socket the local Ray's servers listen on is bound to 127.0.0.1."""
    import psutil

    assert {node["NodeManagerAddress"] for node in ray_local.nodes()} == {"127.0.0.1"}
    session_pids = {p.pid for p in psutil.Process().children(recursive=True)}
    listening = [
        c for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.pid in session_pids
    ]
    assert listening, "expected the Ray servers started by this session to listen somewhere"
    assert {c.laddr.ip.removeprefix("::ffff:") for c in listening} == {"127.0.0.1"}, listening


def test_local_ray_keeps_token_authentication_on(ray_local):
    """Ray 2.60 turns token auth on for a local cluster; nothing of ours may turn it off."""
    import os

    assert os.environ.get("RAY_AUTH_MODE", "").lower() == "token"


def test_training_on_the_ray_pool_equals_training_in_process(ray_local, tmp_path, monkeypatch):
    """End to end in the default suite (the `ray job submit` version is slow): the same short MAML run through
    `train(cfg)` on a 2-actor Ray pool and on the in-process pool ends with bitwise the same policy and the same
    held-out figures; any difference between Ray and local batches would show in both."""
    from tests.learner.learning_runs import nav2d_config, run
    from workers.ray_pool import RayWorkerPool

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    cfg = nav2d_config("maml", 0, iterations=2, tasks=8, meta_batch=4, eval_tasks=3)
    local = run(cfg, LocalWorkerPool(1))
    pool = RayWorkerPool(2)
    try:
        remote = run(cfg, pool)
        assert pool.puts >= 2  # the run really sampled on the actors: one put per policy version at least
    finally:
        pool.close()
    assert remote.env_steps == local.env_steps > 0
    assert remote.final_eval.returns == local.final_eval.returns
    ours, theirs = local.learner.policy_weights("v").arrays, remote.learner.policy_weights("v").arrays
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        np.testing.assert_array_equal(theirs[name], value, err_msg=name)
    assert any((local.first_eval.returns[k] != local.final_eval.returns[k]) for k in local.final_eval.returns)
