"""Canary rollout: a candidate goes to a few robots first, and to the whole fleet only if what they report holds.

``fleet promote models:/NAME@candidate --canary kuka-0 --gate success>=0.8 --episodes 20``:

1. moves only the canaries' aliases (``models:/NAME@robot-<id>``) to the candidate;
2. waits, at most ``deadline_s``, until the canaries have reported ``episodes`` episodes of the candidate to the
   ``fleet`` experiment (telemetry of `fleet run`, :mod:`deploy.telemetry`), counted from the move;
3. compares them with the gate and with what the current version (the alias's holder, e.g. @production)
   reported on the other robots: the candidate passes if the gate holds on the canaries' mean and that mean is
   not worse than the other robots' on the same metric;
4. passes: moves the alias and every other robot's alias to the candidate; fails (or the deadline passes):
   moves the canaries back to their previous versions. Every move is in the signed history (`fleet history`)
   with gate ``canary`` and the figures behind it.
"""

from __future__ import annotations

import operator
import re
import time
from dataclasses import dataclass, field

from deploy.history import alias_holder, move_alias, require_model, robot_alias
from deploy.registry import RegistryError

GATE = re.compile(r"^\s*(success|return)\s*(>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
POLL_S = 1.0


@dataclass(frozen=True)
class Gate:
    metric: str
    op: str
    threshold: float

    @classmethod
    def parse(cls, text: str) -> Gate:
        match = GATE.match(text or "")
        if not match:
            raise ValueError(f"--gate {text!r} does not parse: expected METRIC OP NUMBER with METRIC success or "
                             "return and OP one of >= > <= <, e.g. success>=0.8")
        return cls(match[1], match[2], float(match[3]))

    def holds(self, value: float) -> bool:
        return OPS[self.op](value, self.threshold)

    def not_worse(self, candidate: float, incumbent: float) -> bool:
        """Higher is better for a lower bound (>=, >), lower for an upper bound."""
        return candidate >= incumbent if self.op in (">=", ">") else candidate <= incumbent

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"


@dataclass
class CanaryPlan:
    model: str
    candidate: str
    alias: str
    canaries: list[str]
    gate: Gate
    episodes: int
    deadline_s: float
    command: str = ""


@dataclass
class CanaryDecision:
    model: str
    candidate: str
    alias: str
    incumbent: str | None
    canaries: list[str]
    promoted: bool
    reason: str
    figures: dict
    moves: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def parse_model_uri(client, uri: str) -> tuple[str, str]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> (name, version); RegistryError if it is not set."""
    match = re.match(r"^models:/([^/@]+)(?:@([^/]+)|/(\d+))$", uri or "")
    if not match:
        raise ValueError(f"expected models:/NAME@ALIAS or models:/NAME/VERSION, got {uri!r}")
    name, alias, version = match.groups()
    require_model(client, name)
    if alias:
        version = alias_holder(client, name, alias)
        if version is None:
            raise RegistryError(f"{uri} is not set")
    return name, str(version)


def fleet_robots(client, model: str) -> dict[str, str]:
    """Robot id -> version, for every ``robot-<id>`` alias of ``model``."""
    aliases = require_model(client, model).aliases
    return {alias[len("robot-"):]: str(v) for alias, v in aliases.items() if alias.startswith("robot-")}


def check_plan(client, plan: CanaryPlan) -> dict[str, str]:
    """Raise ValueError for a plan that must not start (nothing moved yet); the fleet's robots -> versions."""
    if plan.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {plan.episodes}")
    if not plan.deadline_s > 0:
        raise ValueError(f"--deadline must be > 0 seconds, got {plan.deadline_s}")
    if not plan.canaries or any(not r for r in plan.canaries):
        raise ValueError("--canary names no robot; expected ROBOT[,ROBOT...]")
    robots = fleet_robots(client, plan.model)
    unknown = [r for r in plan.canaries if r not in robots]
    if unknown:
        raise ValueError(f"--canary: unknown robot{'s' * (len(unknown) > 1)} {', '.join(unknown)}: models:/"
                         f"{plan.model} has robot aliases for {', '.join(sorted(robots)) or 'no robot'} "
                         "(set one with `fleet rollback`/an alias move first)")
    return robots


def _values(client, model: str, version: str, robots: list[str], since_ms: float) -> dict[str, list[float]]:
    from deploy.telemetry import EXPERIMENT

    out: dict[str, list[float]] = {"return": [], "success": [], "episodes": []}
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None or not robots:
        return out
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        tags = run.data.tags
        if tags.get("model") != model or tags.get("version") != version or tags.get("robot") not in robots:
            continue
        for key in ("return", "success"):
            out[key] += [m.value for m in client.get_metric_history(run.info.run_id, key) if m.timestamp >= since_ms]
        out["episodes"] += [m.step for m in client.get_metric_history(run.info.run_id, "length")
                            if m.timestamp >= since_ms]
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def run_canary(client, plan: CanaryPlan, sleep=time.sleep, clock=time.time) -> CanaryDecision:
    robots = check_plan(client, plan)
    incumbent = alias_holder(client, plan.model, plan.alias)
    previous = {r: robots[r] for r in plan.canaries}
    moves = []

    def move(alias: str, version: str, reason: str, passed, figures: dict) -> None:
        record = move_alias(client, plan.model, alias, version, reason=reason, gate="canary", passed=passed,
                            figures=figures, command=plan.command)
        moves.append({"alias": alias, "from": record.from_version, "to": record.to_version})

    started = clock()
    base = {"candidate_version": plan.candidate, "incumbent_version": incumbent, "gate": str(plan.gate),
            "episodes_wanted": plan.episodes, "canaries": ",".join(plan.canaries)}
    for robot in plan.canaries:
        move(robot_alias(robot), plan.candidate, f"canary of v{plan.candidate}: waiting for {plan.episodes} episodes",
             None, {**base, "stage": "canary"})
    since_ms = 1000 * (started - 1.0)  # a second's slack for clocks between this host and the robots
    while True:
        reported = _values(client, plan.model, plan.candidate, plan.canaries, since_ms)
        if len(reported["episodes"]) >= plan.episodes or clock() - started >= plan.deadline_s:
            break
        sleep(POLL_S)
    others = [r for r in robots if r not in plan.canaries]
    baseline = _values(client, plan.model, incumbent, others, 0.0) if incumbent else {"return": [], "success": []}
    value, reference = _mean(reported[plan.gate.metric]), _mean(baseline[plan.gate.metric])
    figures = {**base, "canary_episodes": len(reported["episodes"]), "canary_success": _mean(reported["success"]),
               "canary_return": _mean(reported["return"]), "fleet_episodes": len(baseline["return"]),
               "fleet_success": _mean(baseline["success"]), "fleet_return": _mean(baseline["return"]),
               "waited_s": round(clock() - started, 3)}
    if len(reported["episodes"]) < plan.episodes:
        promoted, reason = False, (f"rolled back: the canaries reported {len(reported['episodes'])} of "
                                   f"{plan.episodes} episodes within the {plan.deadline_s:g} s deadline")
    elif value is None:
        promoted, reason = False, f"rolled back: the canaries reported no {plan.gate.metric}"
    elif not plan.gate.holds(value):
        promoted, reason = False, f"rolled back: canary {plan.gate.metric} {value:.3f} fails {plan.gate}"
    elif reference is not None and not plan.gate.not_worse(value, reference):
        promoted, reason = False, (f"rolled back: canary {plan.gate.metric} {value:.3f} is worse than v{incumbent}'s "
                                   f"{reference:.3f} on the other robots")
    else:
        promoted = True
        reason = f"canary {plan.gate.metric} {value:.3f} passes {plan.gate}" + (
            f" and is not worse than v{incumbent}'s {reference:.3f} on the other robots" if reference is not None
            else " (no figures of the current version on other robots)")
    if promoted:
        move(plan.alias, plan.candidate, reason, True, {**figures, "stage": "fleet"})
        for robot in others:
            move(robot_alias(robot), plan.candidate, reason, True, {**figures, "stage": "fleet"})
    else:
        for robot, version in previous.items():
            if version != plan.candidate:
                move(robot_alias(robot), version, reason, False, {**figures, "stage": "rollback"})
    return CanaryDecision(plan.model, plan.candidate, plan.alias, incumbent, plan.canaries, promoted, reason,
                          figures, moves)
