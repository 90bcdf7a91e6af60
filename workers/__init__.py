"""workers: rollout workers and the pools that run them (in-process or as Ray actors).

Importing this package does not import Ray; `workers.ray_pool` does. The numpy policies the
workers run live in the `policy` package.
"""

from workers.backends import make_pool
from workers.batch import Batch, SampleRequest
from workers.pool import LocalWorkerPool, WorkerPool
from workers.rollout import rollout
from workers.worker import RolloutWorker

__all__ = [
    "Batch",
    "LocalWorkerPool",
    "RolloutWorker",
    "SampleRequest",
    "WorkerPool",
    "make_pool",
    "rollout",
]
