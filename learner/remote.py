"""Learner placement: the learner in a Ray actor (on a GPU when the cluster has one), behind a
driver-side proxy that is a `Learner` too (learner/interface.py): the loop cannot tell them apart.

Ray enters learner/ here only; `learner/builder.py` imports this module lazily, when the learner may
leave the driver (`learner.placement` is `actor`, or `auto` under Ray), and hands it the factory that
builds a learner (so this module never chooses a learner class).

    pool, group = placed_pool(cfg)                 # workers in the learner's placement group when it gets a GPU
    learner = RemoteLearner(make_learner, spec, cfg.learner, train_tasks, seed=0, group=group)
    plan = learner.collect(tasks, 0, episodes)    # the plan runs in the actor; batches travel by ray.put

`placement: auto` puts the learner in an actor with `num_gpus=1` when `ray.cluster_resources()`
lists GPUs, else it stays in the driver (CPU). `actor` always uses an actor (CPU when the cluster has
no GPU). Inside the actor `device: auto` picks CUDA when torch sees it: on a Ray node that only
*advertises* a GPU (`ray.init(num_gpus=1)` on a CPU machine) the actor gets the GPU slot but torch sees
no CUDA, so the learner runs on the actor's CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import ray
import torch
from ray.util.placement_group import PlacementGroup, placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from fleet.tasks import Task
from learner.checkpoint import rng_state, set_rng_state
from learner.config import Config, LearnerConfig
from learner.interface import Collect, Learner, Plan
from policy import PolicySpec, PolicyWeights
from workers.backends import make_pool
from workers.pool import WorkerPool

log = logging.getLogger(__name__)
GROUP_READY_TIMEOUT_S = 120.0
PROCESS_RNG = "process_rng"  # the actor process's RNG states, inside the learner's state dict
Factory = Callable[[PolicySpec, LearnerConfig, Sequence[Task]], Learner]  # learner/builder.py make_learner


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
    """The learner inside its actor: built there (device auto) by `factory`; drives the learner's plans
    (`collect`, `adaptation`) there, so only Collects and batches cross the process boundary."""

    def __init__(self, factory: Factory, spec: PolicySpec, config: LearnerConfig, train_tasks: Sequence[Task],
                 seed: int):
        torch.manual_seed(seed)
        self.learner = factory(spec, config, train_tasks)
        self.plan: Plan | None = None

    def info(self) -> dict:
        """What the proxy mirrors: algorithm, device, GPUs Ray gave this actor."""
        return {"algorithm": self.learner.algorithm, "device": str(getattr(self.learner, "device", "cpu")),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "cuda": torch.cuda.is_available()}

    def start_collect(self, tasks: list[Task], iteration: int, episodes: int) -> Collect | None:
        return self._start(self.learner.collect(tasks, iteration, episodes))

    def start_adaptation(self, tasks: list[Task], rounds: int, version: str, episodes: int) -> Collect | None:
        return self._start(self.learner.adaptation(tasks, rounds, version, episodes))

    def _start(self, plan: Plan) -> Collect | None:
        self.plan = plan
        return self.send(None)

    def send(self, refs: list[ray.ObjectRef] | None) -> Collect | None:
        """The batches of the plan's last phase (by reference) in; its next phase (None: done) out."""
        if self.plan is None:
            raise RuntimeError("send() without a started plan")
        try:
            return self.plan.send(None if refs is None else ray.get(list(refs)))  # type: ignore[arg-type]
        except StopIteration:
            self.plan = None
            return None

    def update(self) -> dict[str, float]:
        return self.learner.update()

    def policy_weights(self, version: str) -> PolicyWeights:
        return self.learner.policy_weights(version)

    def state_dict(self) -> dict:
        return {**to_cpu(self.learner.state_dict()), PROCESS_RNG: rng_state()}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        process_rng = state.pop(PROCESS_RNG, None)
        self.learner.load_state_dict(state)
        if process_rng is not None:  # a checkpoint of an in-driver learner has none: keep this process's
            set_rng_state(process_rng)


class RemoteLearner(Learner):
    """Driver-side proxy of a learner in a `LearnerHost` actor: the same `Learner` interface. A plan's
    phases come from the actor one at a time; each batch is `ray.put` once. `close()` kills the actor."""

    def __init__(self, factory: Factory, spec: PolicySpec, config: LearnerConfig, train_tasks: Sequence[Task] = (),
                 seed: int = 0, group: PlacementGroup | None = None):
        self.factory, self.spec, self.config, self.train_tasks = factory, spec, config, tuple(train_tasks)
        gpus = 1 if (group is not None or cluster_gpus() > 0) else 0
        options: dict = {"num_cpus": 1, "num_gpus": gpus}
        if group is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0)
        self.actor = ray.remote(LearnerHost).options(**options).remote(factory, spec, config, self.train_tasks, seed)
        self.info = ray.get(self.actor.info.remote())
        self.algorithm = self.info["algorithm"]
        self.device = torch.device(self.info["device"])
        log.info("learner placed in an actor: device %s, Ray GPU ids %s", self.device, self.info["gpu_ids"])

    def _drive(self, first: ray.ObjectRef) -> Plan:
        collect = ray.get(first)
        while collect is not None:
            batches = yield collect
            collect = ray.get(self.actor.send.remote([ray.put(b) for b in batches]))

    def collect(self, tasks: Sequence[Task], iteration: int, episodes: int) -> Plan:
        return self._drive(self.actor.start_collect.remote(list(tasks), iteration, episodes))

    def adaptation(self, tasks: Sequence[Task], rounds: int, version: str, episodes: int) -> Plan:
        return self._drive(self.actor.start_adaptation.remote(list(tasks), rounds, version, episodes))

    def update(self) -> dict[str, float]:
        return ray.get(self.actor.update.remote())

    def policy_weights(self, version: str) -> PolicyWeights:
        return ray.get(self.actor.policy_weights.remote(version))

    def state_dict(self) -> dict:
        return ray.get(self.actor.state_dict.remote())

    def load_state_dict(self, state: dict) -> None:
        ray.get(self.actor.load_state_dict.remote(state))

    def local(self) -> Learner:
        """A CPU copy of the learner in this process (the trained learner, for callers after the actor is gone)."""
        local = self.factory(self.spec, self.config.model_copy(update={"device": "cpu"}), self.train_tasks)
        state = self.state_dict()
        state.pop(PROCESS_RNG, None)
        local.load_state_dict(state)
        return local

    def oracle(self) -> Learner | None:
        return self.local().oracle()

    def close(self) -> None:
        """Kill the actor (its GPU and CPU go back to the cluster)."""
        if self.actor is not None:
            ray.kill(self.actor)
            self.actor = None
