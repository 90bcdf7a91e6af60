"""RolloutWorker: many envs, batched numpy inference, stamped batches. Ray-agnostic.

The same class runs in-process (LocalWorkerPool) and as a Ray actor (RayWorkerPool).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import gymnasium as gym
import numpy as np

from fleet.robots import RobotSpec
from policy import NumpyGaussianPolicy, PolicyWeights, make_policy
from workers.batch import Batch, SampleRequest
from workers.rollout import rollout

EnvFactory = Callable[[str, RobotSpec, int], gym.Env]


def default_env_factory(family: str, robot: RobotSpec, horizon: int) -> gym.Env:
    """Build a fleet env (imported lazily so the worker module stays light)."""
    import fleet

    return fleet.make_env(family, robot, horizon)


class RolloutWorker:
    """Serves `SampleRequest`s with envs it keeps between calls.

    >>> worker = RolloutWorker(worker_id=0)
    >>> [batch] = worker.sample([request], {request.policy_version: weights})
    """

    def __init__(self, worker_id: int = 0, env_factory: EnvFactory | None = None, max_env_sets: int = 4):
        self.worker_id = worker_id
        self._env_factory = env_factory or default_env_factory
        self.max_env_sets = max_env_sets  # env groups kept per (family, robot, horizon), least recent closed
        self._envs: dict[tuple, list[gym.Env]] = {}
        self._seq = 0

    def sample(self, requests: Sequence[SampleRequest], weights: dict[str, PolicyWeights]) -> list[Batch]:
        """One batch per request, in request order.

        Policies are rebuilt from `weights` on every call (cheap) rather than cached by version
        string, so a reused version name can never serve stale weights.
        """
        policies: dict[str, NumpyGaussianPolicy] = {}
        for request in requests:
            version = request.policy_version
            if version not in policies:
                if version not in weights:
                    raise KeyError(f"no weights sent for policy version {version!r}; have {sorted(weights)}")
                policies[version] = make_policy(weights[version])
        batches = []
        for request in requests:
            try:
                batches.append(self._serve(request, policies[request.policy_version]))
            except Exception as exc:
                exc.task_id = request.task.task_id  # type: ignore[attr-defined]  # lets a pool name the request
                raise
        return batches

    def sample_flat(self, requests: Sequence[SampleRequest], versions: Sequence[str], *weights) -> list[Batch]:
        """`sample` with weights as positional args, so Ray resolves their ObjectRefs for us."""
        return self.sample(requests, dict(zip(versions, weights)))

    def ping(self) -> dict:
        return {"worker_id": self.worker_id, "pid": os.getpid(), "seq": self._seq}

    def close(self) -> None:
        for envs in self._envs.values():
            for env in envs:
                env.close()
        self._envs.clear()

    def _serve(self, request: SampleRequest, policy: NumpyGaussianPolicy) -> Batch:  # or a recurrent policy
        context = np.asarray(request.context, np.float32)
        start = time.perf_counter()
        if request.trial_episodes > 1 or policy.recurrent:
            from workers.recurrent import rollout_trials

            trials = request.episodes // request.trial_episodes
            envs = self._envs_for(request.task.family, request.robot, request.horizon, trials)
            arrays = rollout_trials(envs, policy, request.task.params, request.horizon, request.seed,
                                    request.deterministic, request.trial_episodes, context)
        else:
            envs = self._envs_for(request.task.family, request.robot, request.horizon, request.episodes)
            arrays = rollout(envs, policy, request.task.params, request.horizon, request.seed,
                             request.deterministic, context)
        elapsed = time.perf_counter() - start
        guard_trips = int(arrays.pop("guard_trips", 0))
        self._seq += 1
        batch = Batch(
            **arrays,
            task=request.task,
            robot=request.robot,
            policy_version=request.policy_version,
            phase=request.phase,
            worker_id=self.worker_id,
            seq=self._seq,
            context=context,
            trial_episodes=request.trial_episodes,
        )
        batch.stats = {"sample_seconds": elapsed, "env_steps": batch.num_steps, "guard_trips": guard_trips}
        return batch

    def _envs_for(self, family: str, robot: RobotSpec, horizon: int, count: int) -> list[gym.Env]:
        key = (family, robot, horizon)
        envs = self._envs.pop(key, [])
        self._envs[key] = envs  # most recently used last
        while len(self._envs) > self.max_env_sets:  # a pybullet env holds ~40 MB: bound the cache
            for env in self._envs.pop(next(iter(self._envs))):
                env.close()
        while len(envs) < count:
            envs.append(self._env_factory(family, robot, horizon))
        return envs[:count]
