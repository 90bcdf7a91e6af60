"""Named seed streams: every sampling request's seed is derived from the run seed, where the request sits
(iteration or evaluation round, task position) and the stream of its phase.

The numbers are the keys runs have always used, so runs stay bitwise identical across versions:

    request_seed(seed, "support", iteration, i)   # == SeedSequence([seed, iteration, i, 1])
    request_seed(seed, "support2", iteration, i)  # multi-step MAML: phi_2's support episodes (22)
    request_seed(seed, "eval", round, i)          # gradient evaluation, one seed per round
    request_seed(seed, "trials", i)               # in-context evaluation: one trial covers every round
    request_seed(seed, "tasks", i)                # per-task evaluation without adaptation

"trials" and "tasks" share 11 (they never run under one base seed in one run: the trainer offsets the
base seed of each evaluation).
"""

from __future__ import annotations

import numpy as np

STREAMS: dict[str, int] = {"support": 1, "query": 2, "explore": 3, "eval": 7, "trials": 11, "tasks": 11,
                           # multi-step MAML: support episodes of inner step j + 1, collected with phi_j
                           **{f"support{j}": 20 + j for j in range(1, 10)}}
ROUND_KEYED = frozenset({"eval"})  # evaluation streams whose seeds include the round (a fresh draw per round)
# Base seeds of the evaluations, offset from the run seed so they never replay a training request.
EVALUATIONS: dict[str, int] = {"held_out": 1_000_003, "train_tasks": 2_000_003}


def derive_seed(*keys: int) -> int:
    """A 32-bit seed derived from a tuple of ints."""
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(1)[0])


def request_seed(seed: int, stream: str, *scope: int) -> int:
    """The seed of one request: run seed, its position (`scope`, e.g. iteration and task index), stream."""
    if stream not in STREAMS:
        raise ValueError(f"unknown seed stream {stream!r}; expected one of {sorted(STREAMS)} (learner/seeds.py)")
    return derive_seed(seed, *scope, STREAMS[stream])


def eval_seed(seed: int, stream: str, round_: int, task_index: int) -> int:
    """An evaluation request's seed: keyed by round for ROUND_KEYED streams, else by task position only."""
    scope = (round_, task_index) if stream in ROUND_KEYED else (task_index,)
    return request_seed(seed, stream, *scope)


def evaluation_seed(seed: int, evaluation: str) -> int:
    """The base seed of one of the run's evaluations (`EVALUATIONS`): held-out tasks, or training tasks."""
    if evaluation not in EVALUATIONS:
        raise ValueError(f"unknown evaluation {evaluation!r}; expected one of {sorted(EVALUATIONS)}")
    return seed + EVALUATIONS[evaluation]
