"""RayWorkerPool: the same RolloutWorker as Ray actors. Ray stays at this edge of the system."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import ray
from ray._private import ray_constants

from workers.batch import Batch, SampleRequest
from workers.policy import PolicyWeights
from workers.pool import WorkerPool, split_evenly
from workers.worker import EnvFactory, RolloutWorker

log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to `address` / RAY_ADDRESS if given (cluster or `ray job submit`), else start a
    private local Ray whose servers listen on 127.0.0.1 only, without the dashboard."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return
    loopback_only()
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        _node_ip_address=LOOPBACK,
        logging_level=logging.WARNING,
    )


def loopback_only() -> None:
    """Make a local Ray use 127.0.0.1 for every server it starts.

    On Linux, Ray turns "127.0.0.1" into the primary interface's address and its GCS and raylet
    listen on all interfaces. With cluster mode off (what Ray does on macOS/Windows), the node
    address resolves to loopback, for this process (the constant) and for every Ray process it
    spawns (the environment variable).
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


class RayWorkerPool(WorkerPool):
    """`num_workers` RolloutWorker actors (1 CPU each). One remote call per worker per `sample`.

    Each weights version is `ray.put` once and shared by reference with every actor.
    """

    def __init__(self, num_workers: int = 2, env_factory: EnvFactory | None = None, max_restarts: int = 2):
        init_ray()
        self.num_workers = num_workers
        actor_cls = ray.remote(num_cpus=1, max_restarts=max_restarts)(RolloutWorker)
        self.actors = [actor_cls.remote(i, env_factory) for i in range(num_workers)]
        self._refs: dict[str, tuple[PolicyWeights, ray.ObjectRef]] = {}
        self._previous: dict[str, tuple[PolicyWeights, ray.ObjectRef]] = {}
        self.puts = 0  # how many weight objects went to the object store (tested: once per version)
        ray.get([actor.ping.remote() for actor in self.actors])

    def sample(self, requests: Sequence[SampleRequest], weights: dict[str, PolicyWeights]) -> list[Batch]:
        versions = sorted({r.policy_version for r in requests})
        refs = self._put(versions, weights)
        futures = []
        for actor, idx in zip(self.actors, split_evenly(len(requests), self.num_workers)):
            if len(idx):
                chunk = [requests[i] for i in idx]
                futures.append(actor.sample_flat.remote(chunk, versions, *refs))
        return [batch for chunk in ray.get(futures) for batch in chunk]

    def _put(self, versions: list[str], weights: dict[str, PolicyWeights]) -> list[ray.ObjectRef]:
        missing = [v for v in versions if v not in weights]
        if missing:
            raise KeyError(f"no weights given for policy versions {missing}")
        fresh = {}
        known = {**self._previous, **self._refs}
        for version in versions:
            cached = known.get(version)
            if cached is None or cached[0] is not weights[version]:
                cached = (weights[version], ray.put(weights[version]))
                self.puts += 1
            fresh[version] = cached
        # Refs of this call and the one before stay (support with theta, query with phi_i, then
        # theta again for evaluation); older refs are dropped and Ray frees their objects.
        self._previous, self._refs = self._refs, fresh
        return [fresh[v][1] for v in versions]

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        self._refs.clear()
        self._previous.clear()
