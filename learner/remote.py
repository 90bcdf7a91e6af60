"""Learner placement: the MetaLearner in a Ray actor (on a GPU when the cluster has one), behind a
driver-side proxy with the methods the trainer and the evaluation call.

Ray enters learner/ here only; `learner/trainer.py` imports this module lazily, when the learner may
leave the driver (`learner.placement` is `actor`, or `auto` under Ray).

    pool, group = placed_pool(cfg)                 # workers in the learner's placement group when it gets a GPU
    learner = place_learner(spec, cfg.learner, train_tasks, seed=0, group=group)
    support = pool.sample(requests, {w.version: w for w in learner.weights_for(tasks, "it0")})
    adapted = learner.adapt_for_training(support, "it0")   # batches travel by ray.put, once each

`placement: auto` puts the learner in an actor with `num_gpus=1` when `ray.cluster_resources()`
lists GPUs, else it stays in the driver (CPU). `actor` always uses an actor (CPU when the cluster has
no GPU). Inside the actor `device: auto` picks CUDA when torch sees it: on a Ray node that only
*advertises* a GPU (`ray.init(num_gpus=1)` on a CPU machine) the actor gets the GPU slot but torch sees
no CUDA, so the learner runs on the actor's CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import ray
import torch
from ray.util.placement_group import PlacementGroup, placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from fleet.tasks import Task
from learner.base import MetaLearner
from learner.checkpoint import rng_state, set_rng_state
from learner.config import Config, LearnerConfig
from policy import PolicySpec, PolicyWeights
from workers.backends import make_pool
from workers.batch import Batch
from workers.pool import WorkerPool

log = logging.getLogger(__name__)
GROUP_READY_TIMEOUT_S = 120.0
PROCESS_RNG = "process_rng"  # the actor process's RNG states, inside the learner's state dict


def cluster_gpus() -> float:
    """GPUs the connected Ray cluster advertises (0 when Ray is not initialised)."""
    return float(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0.0


def wants_actor(placement: str) -> bool:
    """Whether `learner.placement` puts the learner in an actor, given the cluster Ray is connected to."""
    if placement not in ("auto", "driver", "actor"):
        raise ValueError(f"learner.placement must be 'auto', 'driver' or 'actor', got {placement!r}")
    return placement == "actor" or (placement == "auto" and cluster_gpus() > 0)


def learner_group(num_workers: int, timeout_s: float = GROUP_READY_TIMEOUT_S) -> PlacementGroup:
    """Reserve the learner ({GPU: 1, CPU: 1}, bundle 0) and one {CPU: 1} bundle per worker, packed."""
    bundles = [{"GPU": 1, "CPU": 1}] + [{"CPU": 1} for _ in range(num_workers)]
    group = placement_group(bundles, strategy="PACK")
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if not ready:
        ray.util.remove_placement_group(group)
        raise RuntimeError(f"could not reserve 1 GPU + {num_workers + 1} CPUs for the learner and {num_workers} "
                           f"workers within {timeout_s:.0f} s (cluster has {ray.cluster_resources()}); lower "
                           "workers.num_workers or set learner.placement=driver")
    return group


def placed_pool(cfg: Config) -> tuple[WorkerPool, PlacementGroup | None]:
    """The run's worker pool and, when the learner goes to a GPU actor under Ray, the placement group
    holding it and the workers (the caller removes it at the end)."""
    if cfg.workers.backend != "ray":
        return make_pool(cfg.workers.backend, cfg.workers.num_workers), None
    from workers.ray_pool import RayWorkerPool, init_ray

    init_ray()
    if not (wants_actor(cfg.learner.placement) and cluster_gpus() > 0):
        return make_pool("ray", cfg.workers.num_workers), None
    group = learner_group(cfg.workers.num_workers)
    return RayWorkerPool(cfg.workers.num_workers, placement_group=group, bundle_offset=1), group


def place_learner(spec: PolicySpec, config: LearnerConfig, train_tasks: Sequence[Task] = (), seed: int = 0,
                  group: PlacementGroup | None = None) -> MetaLearner | RemoteLearner:
    """The learner where `config.placement` says: in this process, or in an actor (GPU when there is one).

    `seed` seeds torch before the network is built, in whichever process builds it."""
    from learner.trainer import make_learner

    if not wants_actor(config.placement):
        torch.manual_seed(seed)
        return make_learner(spec, config, train_tasks)
    if not ray.is_initialized():
        from workers.ray_pool import init_ray

        init_ray()
    return RemoteLearner(spec, config, train_tasks, seed, group)


def to_cpu(value):
    """Tensors (in nested dicts/lists/tuples) moved to CPU: what crosses the process boundary."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


class LearnerHost:
    """The learner inside its actor: built there (device auto), fed batches by object reference."""

    def __init__(self, spec: PolicySpec, config: LearnerConfig, train_tasks: Sequence[Task], seed: int):
        from learner.trainer import make_learner

        torch.manual_seed(seed)
        self.learner = make_learner(spec, config, train_tasks)

    def info(self) -> dict:
        """What the proxy mirrors: algorithm, trial length, device, GPUs Ray gave this actor."""
        return {"algorithm": self.learner.algorithm, "trial_episodes": self.learner.trial_episodes,
                "device": str(self.learner.device), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "cuda": torch.cuda.is_available(), "in_context": hasattr(self.learner, "evaluate_in_context")}

    def call(self, name: str, *args, **kwargs):
        """Run a learner method whose arguments and result are plain or numpy (weights, metrics, contexts)."""
        return getattr(self.learner, name)(*args, **kwargs)

    def call_on_batches(self, name: str, *groups: list[ray.ObjectRef], **kwargs):
        """Run a learner method on batch lists given as lists of object references (one `ray.put` each)."""
        return getattr(self.learner, name)(*(ray.get(list(refs)) for refs in groups), **kwargs)

    def adapt(self, refs: list[ray.ObjectRef], version: str, params: dict | None, steps: int):
        """`MetaLearner.adapt` with per-task params crossing the boundary on CPU."""
        if params is not None:
            params = {k: v.to(self.learner.device) for k, v in params.items()}
        adapted, weights = self.learner.adapt(ray.get(list(refs)), version, params=params, steps=steps)
        return to_cpu(adapted), weights

    def state_dict(self) -> dict:
        return {**to_cpu(self.learner.state_dict()), PROCESS_RNG: rng_state()}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        process_rng = state.pop(PROCESS_RNG, None)
        self.learner.load_state_dict(state)
        if process_rng is not None:  # a checkpoint of an in-driver learner has none: keep this process's
            set_rng_state(process_rng)


class RemoteLearner:
    """Driver-side proxy of a learner in a `LearnerHost` actor, with the MetaLearner methods the trainer
    and the evaluation use. Each batch is `ray.put` once and its reference reused (support batches go to
    `adapt_for_training`, `update` and `observe`). `close()` kills the actor."""

    def __init__(self, spec: PolicySpec, config: LearnerConfig, train_tasks: Sequence[Task] = (), seed: int = 0,
                 group: PlacementGroup | None = None):
        self.spec, self.config, self.train_tasks, self.seed = spec, config, tuple(train_tasks), seed
        gpus = 1 if (group is not None or cluster_gpus() > 0) else 0
        options: dict = {"num_cpus": 1, "num_gpus": gpus}
        if group is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0)
        self.actor = ray.remote(LearnerHost).options(**options).remote(spec, config, self.train_tasks, seed)
        self.info = ray.get(self.actor.info.remote())
        self.algorithm, self.trial_episodes = self.info["algorithm"], self.info["trial_episodes"]
        self.device = torch.device(self.info["device"])
        self._refs: dict[int, tuple[Batch, ray.ObjectRef]] = {}  # batches of this call
        self._previous: dict[int, tuple[Batch, ray.ObjectRef]] = {}  # and of the call before
        self._contexts: dict[str, tuple[float, ...]] = {}
        if self.info["in_context"]:  # meta_evaluate looks the method up with getattr
            self.evaluate_in_context = self._evaluate_in_context
        log.info("learner placed in an actor: device %s, Ray GPU ids %s", self.device, self.info["gpu_ids"])

    def _call(self, name: str, *args, **kwargs):
        return ray.get(self.actor.call.remote(name, *args, **kwargs))

    def _put(self, batches: Sequence[Batch]) -> list[ray.ObjectRef]:
        """One reference per batch, reusing those of batches sent in the last two calls (the trainer sends
        support to `adapt_for_training`, then support + query to `update`, then both to `observe`)."""
        known, fresh = {**self._previous, **self._refs}, {}
        for batch in batches:
            cached = known.get(id(batch))  # the cache holds the batch itself, so its id cannot be reused
            fresh[id(batch)] = cached if cached is not None and cached[0] is batch else (batch, ray.put(batch))
        self._previous, self._refs = self._refs, fresh
        return [fresh[id(b)][1] for b in batches]

    # ---- what the trainer calls --------------------------------------------------------------
    def policy_weights(self, version: str) -> PolicyWeights:
        return self._call("policy_weights", version)

    def weights_for(self, tasks: Sequence[Task], version: str) -> list[PolicyWeights]:
        return self._call("weights_for", list(tasks), version)

    def context_for(self, task: Task) -> tuple[float, ...]:
        """Cached per task: a task's vector depends on the task and the fixed training set only."""
        if task.task_id not in self._contexts:
            self._contexts[task.task_id] = tuple(self._call("context_for", task))
        return self._contexts[task.task_id]

    def adapt_for_training(self, support: Sequence[Batch], version: str) -> list[PolicyWeights]:
        return ray.get(self.actor.call_on_batches.remote("adapt_for_training", self._put(support), version=version))

    def update(self, support: Sequence[Batch], query: Sequence[Batch]) -> dict[str, float]:
        return ray.get(self.actor.call_on_batches.remote("update", self._put(support), self._put(query)))

    def observe(self, batches: Sequence[Batch]) -> None:
        ray.get(self.actor.call_on_batches.remote("observe", self._put(batches)))

    def adapt(self, support: Sequence[Batch], version: str, params: dict | None = None, steps: int = 1):
        return ray.get(self.actor.adapt.remote(self._put(support), version, to_cpu(params), steps))

    def state_dict(self) -> dict:
        return ray.get(self.actor.state_dict.remote())

    def load_state_dict(self, state: dict) -> None:
        ray.get(self.actor.load_state_dict.remote(state))

    def to_local(self) -> MetaLearner:
        """A CPU copy of the learner in this process (the trained learner, for callers after the actor is gone)."""
        from learner.trainer import make_learner

        local = make_learner(self.spec, self.config.model_copy(update={"device": "cpu"}), self.train_tasks)
        state = self.state_dict()
        state.pop(PROCESS_RNG, None)
        local.load_state_dict(state)
        return local

    def _evaluate_in_context(self, pool, tasks, robot, steps, episodes, horizon, seed, version):
        """In-context evaluation (RL^2) samples through the driver's pool: a CPU copy of the learner runs it."""
        return self.to_local().evaluate_in_context(pool, tasks, robot, steps, episodes, horizon, seed, version)

    def close(self) -> None:
        """Kill the actor (its GPU and CPU go back to the cluster)."""
        if self.actor is not None:
            ray.kill(self.actor)
            self.actor = None
