"""The learner interface: what any learner (on-policy, recurrent-trial, off-policy) offers the loop.

A learner says what it wants collected and consumes what comes back, as a generator: each `yield` is a
`Collect` (one collection phase: per task, the policy to act with and how many episodes), and the loop
sends back the batches of that phase. The loop never knows which phases a learner has:

    for iteration in ...:
        tasks = distribution.sample(meta_batch, "train")
        plan = learner.collect(tasks, iteration, episodes)   # MAML: support with theta, then query with phi_i
        batches = None                                   # RL2:  whole trials with theta
        while (request := send(plan, batches)) is not None:   # off-policy: prior- and posterior-z episodes
            batches = pool.sample(requests_for(request), request.weights_by_version())
        metrics = learner.update()                       # one meta-update, or many gradient steps from replay

`episodes` is the run's per-task episode budget of a phase (train.episodes_per_task, train.eval_episodes);
a learner may split it between its phases. Evaluation uses the same shape
(`learner.adaptation(tasks, rounds, version, episodes)`): each `Collect` it yields says which
evaluation rounds it measures (`measures`), so "after k gradient steps" (MAML), "after k context
episodes" (RL2: one trial whose episode k measures round k; PEARL: a posterior from k episodes) are one
protocol (learner/evaluation.py).

The same interface is implemented by a learner in this process and by its Ray actor proxy
(learner/remote.py): the loop cannot tell them apart.
"""

from __future__ import annotations

import abc
from collections.abc import Generator, Sequence
from dataclasses import dataclass

from fleet.tasks import Task
from policy import PolicyWeights
from workers.batch import Batch


@dataclass(frozen=True)
class Collect:
    """One collection phase: for each task, the policy that acts and how.

    `stream` names the seed stream of the phase's requests (learner/seeds.py), so local and Ray pools,
    and a resumed run, draw the same env resets and action noise. `measures`: in an evaluation, the
    rounds this phase's episodes measure: `(k,)` for a whole phase, or `(0, 1, ..., n-1)` for trials of
    n episodes whose episode j measures round j. Empty in training. `label`: the prefix of the phase's
    return/success metrics in training (`pre` -> pre_return, pre_success); default the phase name.
    `robot_params`: privileged robot parameters (fleet.robots.ROBOT_PARAMS names): when given, each request's
    context is its robot's vector of them (`fleet.robots.robot_vector`) instead of `contexts` - the robot is
    paired with the task where the requests are built (learner/sampling.py), so the learner names the parameters.
    """

    phase: str
    tasks: tuple[Task, ...]
    weights: tuple[PolicyWeights, ...]
    episodes: int
    stream: str
    contexts: tuple[tuple[float, ...], ...] = ()
    trial_episodes: int = 1
    deterministic: bool = False
    measures: tuple[int, ...] = ()
    label: str = ""
    robot_params: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.weights) != len(self.tasks):
            raise ValueError(f"Collect {self.phase!r}: {len(self.weights)} policies for {len(self.tasks)} tasks")
        if self.contexts and len(self.contexts) != len(self.tasks):
            raise ValueError(f"Collect {self.phase!r}: {len(self.contexts)} task vectors for {len(self.tasks)} tasks")
        if self.episodes < 1 or self.trial_episodes < 1 or self.episodes % self.trial_episodes:
            raise ValueError(f"Collect {self.phase!r}: episodes ({self.episodes}) must be a positive multiple of "
                             f"trial_episodes ({self.trial_episodes})")

    def context(self, i: int) -> tuple[float, ...]:
        return self.contexts[i] if self.contexts else ()

    def weights_by_version(self) -> dict[str, PolicyWeights]:
        """Each distinct policy once (a pool ships each version once)."""
        return {w.version: w for w in self.weights}


Plan = Generator[Collect, list[Batch], None]


class LearnerFailure(RuntimeError):
    """A learner's update or adaptation raised: the message names the algorithm, where (iteration or
    evaluation), the tasks and their families, and the cause."""


class Learner(abc.ABC):
    """What the loop, the evaluation and the builder need of any learner. See the module docstring."""

    algorithm: str = "base"

    @abc.abstractmethod
    def collect(self, tasks: Sequence[Task], iteration: int, episodes: int) -> Plan:
        """The iteration's collection phases (`episodes` per task and phase by default); keeps what it is
        sent for `update`."""

    @abc.abstractmethod
    def update(self) -> dict[str, float]:
        """Learn from what this iteration collected; scalar metrics."""

    @abc.abstractmethod
    def adaptation(self, tasks: Sequence[Task], rounds: int, version: str, episodes: int) -> Plan:
        """Evaluation phases measuring rounds 0..rounds-1 on `tasks`, `episodes` per task and round (no update
        of the meta-parameters)."""

    @abc.abstractmethod
    def policy_weights(self, version: str) -> PolicyWeights:
        """The meta-policy as numpy weights (what is published)."""

    @abc.abstractmethod
    def state_dict(self) -> dict:
        """Everything needed to resume bitwise (parameters, optimiser, normaliser, buffers or what resume loses)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Inverse of `state_dict`."""

    def oracle(self) -> Learner | None:
        """The oracle yardstick when this learner has one for free: its policy acting with each task's true
        parameters, trained on the same env steps (learner/belief.py). None by default."""
        return None

    def local(self) -> Learner:
        """This learner in this process (a remote proxy returns a CPU copy); what callers keep after a run."""
        return self

    def close(self) -> None:  # noqa: B027  # optional: most learners hold nothing outside this process
        """Release what the learner holds outside this process (an actor); nothing by default."""
