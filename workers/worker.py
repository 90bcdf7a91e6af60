"""RolloutWorker: many envs, batched numpy inference, stamped batches. Ray-agnostic.

The same class runs in-process (LocalWorkerPool) and as a Ray actor (RayWorkerPool).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from fleet.plugins import is_reference
from fleet.robots import RobotSpec, same_body
from fleet.tasks import Task, success_rule
from policy import NumpyGaussianPolicy, PolicyWeights, make_policy
from workers.batch import Batch, SampleRequest
from workers.rollout import rollout

EnvFactory = Callable[[str, RobotSpec, int], gym.Env]


def default_env_factory(family: str, robot: RobotSpec, horizon: int) -> gym.Env:
    """Build a fleet env (imported lazily so the worker module stays light)."""
    import fleet

    return fleet.make_env(family, robot, horizon)


class EnvFailure(ValueError):
    """A plugin task family's env raised in ``make_env``, ``reset`` or ``step``.

    The message names the family, the task (id and params), the call and the cause; it is the only
    constructor argument, so the exception pickles through Ray (the pool sees it as the ``cause``).
    """


def env_failure(family: str, task: Task | None, call: str, cause: BaseException) -> EnvFailure:
    """An :class:`EnvFailure` for ``cause``, raised by ``call`` of ``family``'s env while serving ``task``."""
    where = f" on task {task.task_id!r} (params {json.dumps(task.params, default=repr)})" if task else ""
    return EnvFailure(f"task family {family!r}: {call} raised{where}: {type(cause).__name__}: {cause}")


class ReportingEnv:
    """A plugin env as rollouts use it (``reset``, ``step``, ``close``), turning any exception it raises into
    an :class:`EnvFailure` naming the family and the task being served (set ``task`` before each rollout)."""

    def __init__(self, env: gym.Env, family: str) -> None:
        self.env, self.family = env, family
        self.task: Task | None = None

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        try:
            return self.env.reset(**kwargs)
        except Exception as exc:
            raise env_failure(self.family, self.task, "env.reset", exc) from exc

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        try:
            return self.env.step(action)
        except Exception as exc:
            raise env_failure(self.family, self.task, "env.step", exc) from exc

    def close(self) -> None:
        self.env.close()


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
        success_at = success_rule(request.task.family)
        start = time.perf_counter()
        if request.trial_episodes > 1 or policy.recurrent:
            from workers.recurrent import rollout_trials

            trials = request.episodes // request.trial_episodes
            envs = self._envs_for(request.task, request.robot, request.horizon, trials)
            arrays = rollout_trials(envs, policy, request.task.params, request.horizon, request.seed,
                                    request.deterministic, request.trial_episodes, context, success_at)
        else:
            envs = self._envs_for(request.task, request.robot, request.horizon, request.episodes)
            arrays = rollout(envs, policy, request.task.params, request.horizon, request.seed,
                             request.deterministic, context, success_at)
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

    def _envs_for(self, task: Task, robot: RobotSpec, horizon: int, count: int) -> list[gym.Env]:
        family = task.family
        key = (family, robot, horizon)
        envs = self._envs.pop(key, None)
        if envs is None:
            envs = self._retargeted(key)
        self._envs[key] = envs  # most recently used last
        while len(self._envs) > self.max_env_sets:  # a pybullet env holds ~40 MB: bound the cache
            for env in self._envs.pop(next(iter(self._envs))):
                env.close()
        while len(envs) < count:
            envs.append(self._make_env(task, robot, horizon))
        for env in envs[:count]:
            if isinstance(env, ReportingEnv):
                env.task = task
        return envs[:count]

    def _retargeted(self, key: tuple) -> list[gym.Env]:
        """The least recently used cached group of the same family, horizon and body as `key`'s robot, turned into
        that robot in place (`SimEnv.retarget`: robots that differ only in their joint gains share envs instead
        of each rebuilding a pybullet world); empty when there is none."""
        family, robot, horizon = key
        for other in list(self._envs):
            if other[0] == family and other[2] == horizon and same_body(other[1], robot):
                envs = self._envs[other]
                if all(getattr(env, "retarget", None) is not None and env.retarget(robot) for env in envs):
                    del self._envs[other]
                    return envs
        return []

    def _make_env(self, task: Task, robot: RobotSpec, horizon: int) -> gym.Env | ReportingEnv:
        """A new env; a plugin family's comes wrapped so that its failures name the family and the task."""
        if not is_reference(task.family):
            return self._env_factory(task.family, robot, horizon)
        try:
            env = self._env_factory(task.family, robot, horizon)
        except Exception as exc:
            raise env_failure(task.family, task, "make_env", exc) from exc
        return ReportingEnv(env, task.family)
