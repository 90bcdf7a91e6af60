"""workers: rollout workers and the pools that run them (in-process or as Ray actors).

Importing this package does not import Ray; `workers.ray_pool` does.
"""

from workers.batch import Batch, SampleRequest
from workers.policy import NumpyGaussianPolicy, PolicySpec, PolicyWeights
from workers.pool import LocalWorkerPool, WorkerPool, make_pool
from workers.rollout import rollout
from workers.worker import RolloutWorker

__all__ = [
    "Batch",
    "LocalWorkerPool",
    "NumpyGaussianPolicy",
    "PolicySpec",
    "PolicyWeights",
    "RolloutWorker",
    "SampleRequest",
    "WorkerPool",
    "make_pool",
    "rollout",
]
