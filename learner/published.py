"""Learners that are only evaluated: fixed published weights (a yardstick, or a registered policy) under the
learner's own evaluation protocol, with nothing of the training stack rebuilt.

:class:`PublishedInContext` is how `fleet eval` measures a registered policy that adapts in context, with numpy
inference only: a belief policy (task inference) or an RMA policy (robot inference from its own history), both as
their learners evaluate them - trials of `rounds` episodes, round k = the trial's episode k.
Which kinds are evaluated that way is theirs to say (``policy.kinds.PolicyKind.evaluated_in_context``).
"""

from __future__ import annotations

from collections.abc import Sequence

from fleet.tasks import Task
from learner.interface import Collect, Learner, Plan
from policy import KINDS, PolicyWeights, policy_kind


class EvaluationOnly(Learner):
    """A learner that is only evaluated (a yardstick, or a published policy): fixed weights, nothing to train."""

    def __init__(self, weights: PolicyWeights):
        self.weights = weights

    def collect(self, tasks: Sequence[Task], iteration: int, episodes: int) -> Plan:
        raise NotImplementedError(f"{type(self).__name__} is evaluated, never trained")

    def update(self) -> dict[str, float]:
        raise NotImplementedError(f"{type(self).__name__} is evaluated, never trained")

    def policy_weights(self, version: str) -> PolicyWeights:
        return self.weights

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class PublishedInContext(EvaluationOnly):
    """A published in-context policy (numpy weights, e.g. from the registry) of a kind evaluated in context,
    evaluated as its learner evaluates it: trials of `rounds` episodes, round k = the trial's episode k (the
    belief keeps its belief across the trial; RMA's history restarts every episode, so every round measures
    adaptation within one episode)."""

    def __init__(self, weights: PolicyWeights):
        kind = policy_kind(weights.spec)
        if not kind.evaluated_in_context:
            in_context = [k.name for k in KINDS.values() if k.evaluated_in_context]
            raise ValueError(f"PublishedInContext evaluates in-context policies of kinds {in_context}, "
                             f"got kind {kind.name!r}")
        if kind.check_published is not None:
            kind.check_published(weights)
        super().__init__(weights)
        self.algorithm = kind.name  # the kind's learner, named like the kind

    def adaptation(self, tasks: Sequence[Task], rounds: int, version: str, episodes: int) -> Plan:
        yield Collect("eval", tuple(tasks), (self.weights,) * len(tasks), episodes * rounds, "trials",
                      trial_episodes=rounds, measures=tuple(range(rounds)))


def published_learner(weights: PolicyWeights) -> Learner | None:
    """The evaluation-only learner for published weights of an in-context kind; None for the kinds whose
    learner is rebuilt around the weights (`learner.builder.make_learner`)."""
    return PublishedInContext(weights) if policy_kind(weights.spec).evaluated_in_context else None
