"""Losing a node mid-training: RayWorkerPool keeps sampling on the remaining node, at lower throughput.

A two-node `ray.cluster_utils.Cluster` needs its own `ray.init`, so it runs in a subprocess (this file
run as a script) and does not disturb the session-wide `ray_local` fixture. The driver samples on both
nodes, removes the worker node while a `sample()` is in flight, and keeps sampling: every batch must equal
`LocalWorkerPool`'s for the same requests. Sampling runs in a thread with a deadline, so a pool that stalls
on the lost node makes the test fail instead of hanging; the cluster is shut down in every case.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLES_BEFORE, SAMPLES_AFTER = 3, 4
SAMPLING_DEADLINE_S = 50.0  # all samples, once the cluster is up (healthy: ~20 s; the old pool blocked 60 s)
SUBPROCESS_TIMEOUT_S = 120.0  # last resort: the driver enforces SAMPLING_DEADLINE_S itself
STALLED_EXIT = 3


@pytest.mark.slow
@pytest.mark.integration
def test_removing_a_node_mid_training_keeps_sampling():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every Ray server of the cluster binds 127.0.0.1
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))  # for Ray workers too
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, __file__], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        output, _ = proc.communicate()
        pytest.fail(f"node-loss driver ran past {SUBPROCESS_TIMEOUT_S} s:\n{output[-4000:]}")
    print(output[-4000:])
    assert proc.returncode != STALLED_EXIT and "STALLED" not in output, "sampling stalled after the node was removed"
    assert proc.returncode == 0, output[-4000:]
    result = json.loads(output.rsplit("RESULT ", 1)[1].splitlines()[0])
    print(f"node loss: {result['steps_per_s_before']:.0f} env steps/s on 2 nodes, "
          f"{result['steps_per_s_after']:.0f} on 1 node after the loss; sampling {result['sampling_s']:.1f} s, "
          f"total {time.monotonic() - start:.1f} s")
    assert result["all_equal_local"] and result["samples"] == SAMPLES_BEFORE + SAMPLES_AFTER
    assert result["restarts"] >= 1
    assert len(result["live_slots"]) == 1  # the lost node's worker stays out of rotation


# ---------------------------------------------------------------------------------------------------------
# The driver: runs in the subprocess.


def _requests(round_: int):
    from tests.fakes import ROBOT, point_tasks
    from workers.batch import SampleRequest

    tasks = point_tasks(8, seed=round_)
    return [SampleRequest(t, ROBOT, "v1", 16, 150, 1000 * round_ + i) for i, t in enumerate(tasks)]


def _same(expected, actual) -> bool:
    import numpy as np

    if len(expected) != len(actual):
        return False
    return all(
        a.task == b.task and a.policy_version == b.policy_version
        and all(np.array_equal(getattr(a, n), getattr(b, n)) for n in ("obs", "actions", "logp", "rewards", "mask"))
        for a, b in zip(expected, actual)
    )


def _sample_all(cluster, worker_node, result: dict) -> None:
    import torch

    from learner.networks import GaussianMLPPolicy
    from tests.fakes import POINT_SPEC, point_env_factory
    from workers.pool import LocalWorkerPool
    from workers.ray_pool import RayWorkerPool

    torch.manual_seed(0)
    weights = {"v1": GaussianMLPPolicy(POINT_SPEC, init_std=0.5).to_weights("v1")}
    local = LocalWorkerPool(1, point_env_factory)
    pool = RayWorkerPool(2, point_env_factory)
    durations, equal = [], []
    try:
        for round_ in range(SAMPLES_BEFORE + SAMPLES_AFTER):
            requests = _requests(round_)
            remover = None
            if round_ == SAMPLES_BEFORE:  # remove the node while this sample is in flight
                remover = threading.Timer(min(durations) / 3, cluster.remove_node, args=(worker_node,))
                remover.start()
            start = time.monotonic()
            batches = pool.sample(requests, weights)
            durations.append(time.monotonic() - start)
            if remover is not None:
                remover.join()
            equal.append(_same(local.sample(requests, weights), batches))
            print(f"sample {round_}: {durations[-1]:.2f} s, workers {sorted({b.worker_id for b in batches})}, "
                  f"live {getattr(pool, 'live_slots', None)}, restarts {pool.restarts}, equal {equal[-1]}", flush=True)
        steps = sum(r.episodes * r.horizon for r in _requests(0))
        result.update(
            samples=len(durations), all_equal_local=all(equal), restarts=pool.restarts,
            replacements=pool.replacements, reissued_requests=pool.reissued_requests,
            live_slots=getattr(pool, "live_slots", None),  # None: a pool without re-routing (checked once)
            steps_per_s_before=steps / (sum(durations[1:SAMPLES_BEFORE]) / (SAMPLES_BEFORE - 1)),
            steps_per_s_after=steps / (sum(durations[SAMPLES_BEFORE + 1:]) / (SAMPLES_AFTER - 1)),
        )
    finally:
        pool.close()


def main() -> int:
    sys.path.insert(0, str(REPO))
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray.cluster_utils import Cluster

    from workers.ray_pool import loopback_only

    loopback_only()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        worker_node = cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, logging_level="WARNING")
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        result: dict = {}
        errors: list[BaseException] = []

        def run():
            try:
                _sample_all(cluster, worker_node, result)
            except BaseException as err:  # re-raised in the main thread
                errors.append(err)

        thread = threading.Thread(target=run, daemon=True)
        start = time.monotonic()
        thread.start()
        thread.join(SAMPLING_DEADLINE_S)
        if thread.is_alive():
            print(f"STALLED: sampling did not finish within {SAMPLING_DEADLINE_S} s", flush=True)
            # The stuck thread would reconnect (to any Ray it finds) after ray.shutdown(): kill the
            # cluster's processes and leave at once instead.
            for node in [*cluster.worker_nodes, cluster.head_node]:
                node.kill_all_processes(check_alive=False, allow_graceful=False, wait=True)
            os._exit(STALLED_EXIT)
        if errors:
            raise errors[0]
        result["sampling_s"] = time.monotonic() - start
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    finally:
        ray.shutdown()  # before the cluster: removing the head node with a driver still connected raises
        cluster.shutdown()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # do not wait for a stuck sampling thread
