"""Does the belief recover from a wrong guess on goals it has never seen?

The belief policy (policy/belief.py) on fresh reach goals - drawn with a seed used nowhere in training or tests,
each at least MIN_GOAL_SEPARATION from every training goal - in trials of 5 consecutive episodes per goal, the
belief carried across the trial's episodes (workers.recurrent.rollout_trials, the rollout training and `fleet
eval` use). Per episode: success, the belief's final mean and spread (in metres, through the training tasks' own
task-vector encoding), the distance of its mean to the true goal, and whether it is *confident and wrong*:
spread below the success radius (the belief puts its mass inside one success ball, so posterior sampling keeps
sending the arm to the same place) with its mean more than one success radius from the truth (that place is
not the goal). Reported: success per episode index 0..4, the confident-wrong fraction, the goals that never
recover (no success in the trial's last episode after a wrong confident belief), before and after the fix
(`NumpyBeliefPolicy(recover=False / True)`: the same trained weights, side by side in one run), and the main
job's held-out protocol (its first 20 held-out goals, 10 trials x 3 rounds) for both, so the fix is seen not to
cost held-out success. Raw JSON with provenance: results/belief-robustness.json.

    # once: train the main job's learner for 25 iterations (held-out success saturates there) into a temp dir
    python benchmarks/belief_robustness.py --train 25 --policy /tmp/belief-policy
    # the measurement (both variants on the same weights)
    python benchmarks/belief_robustness.py --policy /tmp/belief-policy --goals 40 --trials 3 --heldout-trials 10

The weights stay in the temp dir: never commit them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import fleet
from benchmarks import provenance
from fleet.tasks import get_family, success_rule
from learner.builder import robot_of, task_distribution
from learner.config import load_config
from policy.artifact import PolicyArtifact
from policy.belief import NumpyBeliefPolicy
from policy.spec import BELIEF_SETTINGS as SETTINGS
from policy.taskvec import TaskVectorEncoder
from workers.recurrent import rollout_trials

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "reach.yaml"
OUT = provenance.RESULTS / "belief-robustness.json"
GOAL_SEED = 73_190_417  # the fresh goals' stream: used nowhere else (training, tests, other benchmarks)
ROLLOUT_SEED = 5_021_993  # the fresh trials' reset and action-noise stream
EPISODES = 5  # consecutive episodes per trial: the belief carries across them


def train_policy(iterations: int, directory: Path) -> dict:
    """Train configs/reach.yaml's learner for `iterations` (local workers, tracking into a temp sqlite, no periodic
    evaluation) and save its published policy as a PolicyArtifact in `directory`; what was run."""
    from deploy.jobs import meta_policy_artifact
    from learner.trainer import train

    scratch = Path(tempfile.mkdtemp(prefix="belief-robustness-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch}/mlflow.db"
    overrides = [f"train.iterations={iterations}", "workers.backend=local", "train.eval_every=0",
                 "train.eval_episodes=2", "train.eval_tasks=4", f"tracking.checkpoint_dir={scratch}/checkpoints"]
    cfg = load_config(CONFIG, overrides)
    started = time.perf_counter()
    result = train(cfg)
    result.tracker.close()
    digest = meta_policy_artifact(cfg, result).save(directory)
    return {"config": CONFIG.relative_to(ROOT).as_posix(), "overrides": overrides, "iterations": result.iterations,
            "env_steps": result.env_steps, "wall_seconds": round(time.perf_counter() - started, 1),
            "content_sha256": digest}


class BeliefRecorder:
    """A belief policy with a record of its belief at the end of every episode of a trial (mean and std of z per
    trial), for rollout_trials: it calls the policy at every step of every episode, padding included."""

    recurrent = True

    def __init__(self, policy, horizon: int):
        self.policy, self.spec, self.horizon = policy, policy.spec, horizon
        self.means: list[np.ndarray] = []
        self.stds: list[np.ndarray] = []
        self.calls = 0

    def initial_state(self, batch: int, rng: np.random.Generator | None = None):
        self.means, self.stds, self.calls = [], [], 0
        return self.policy.initial_state(batch, rng)

    def sample_step(self, obs, prev_action, prev_reward, prev_done, state, rng, deterministic=False):
        actions, logp, state = self.policy.sample_step(obs, prev_action, prev_reward, prev_done, state, rng,
                                                       deterministic)
        self.calls += 1
        if self.calls % self.horizon == 0:  # the episode's last step: the belief it ends with
            self.means.append(state.mean().copy())
            self.stds.append(state.std().copy())
        return actions, logp, state


def fresh_goals(count: int, train_goals: list[dict]) -> list[dict]:
    """`count` goals uniform in the reach goal region from GOAL_SEED, each far enough from every training goal
    (`ReachFamily.too_close`) that it is no copy of one."""
    family = get_family("reach")
    rng, goals = np.random.default_rng(GOAL_SEED), []
    while len(goals) < count:
        params = family.sample_params(rng)
        if not any(family.too_close(params, other) for other in train_goals):
            goals.append(params)
    return goals


def run_goal(policy, envs: list, params: dict, episodes: int, horizon: int, seed: int,
             encoder: TaskVectorEncoder, radius: float) -> list[dict]:
    """Trials of `episodes` consecutive episodes of one goal (one trial per env); one record per trial."""
    recorder = BeliefRecorder(policy, horizon)
    arrays = rollout_trials(envs, recorder, params, horizon, seed, False, episodes, None, success_rule("reach"))
    success = arrays["success"].reshape(len(envs), episodes).astype(bool)
    goal = np.asarray(params["goal"], np.float64)
    trials = []
    for i in range(len(envs)):
        mean_m = np.stack([encoder.mean + encoder.std * m[i] for m in recorder.means])  # [episodes, 3], metres
        spread = np.stack([np.sqrt(np.sum((encoder.std * s[i]) ** 2)) for s in recorder.stds])
        error = np.linalg.norm(mean_m - goal, axis=1)
        trials.append({"success": success[i].tolist(), "belief_mean": np.round(mean_m, 4).tolist(),
                       "belief_std": np.round(spread, 4).tolist(), "error": np.round(error, 4).tolist(),
                       "confident_wrong": ((spread < radius) & (error > radius)).tolist()})
    return trials


def summarise(goals: list[dict], records: list[list[dict]], episodes: int) -> dict:
    """Success per episode index (mean and stderr over trials), the confident-wrong fraction (all episodes, and
    per index), and the goals with a trial that never recovers (confident and wrong at some episode, and no
    success from there to the trial's end)."""
    trials = [t for goal in records for t in goal]
    success = np.asarray([t["success"] for t in trials], float)
    wrong = np.asarray([t["confident_wrong"] for t in trials], float)
    stuck = []
    for g, goal_trials in enumerate(records):
        for t in goal_trials:
            first = next((k for k, w in enumerate(t["confident_wrong"]) if w), None)
            if first is not None and not any(t["success"][first:]):
                stuck.append({"goal_index": g, "goal": goals[g]["goal"], "success": t["success"],
                              "error": t["error"], "belief_std": t["belief_std"]})
                break
    n = len(trials)
    return {"trials": n, "episodes": int(success.size),
            "success_per_episode": np.round(success.mean(0), 4).tolist(),
            "success_stderr": np.round(success.std(0, ddof=1) / np.sqrt(n), 4).tolist(),
            "confident_wrong_fraction": round(float(wrong.mean()), 4),
            "confident_wrong_per_episode": np.round(wrong.mean(0), 4).tolist(),
            "median_error_m": np.round(np.median([t["error"] for t in trials], axis=0), 4).tolist(),
            "goals_never_recovered": stuck}


def held_out(policy, cfg, envs: list, trials: int, rounds: int) -> dict:
    """The main job's held-out protocol, numpy only: its first `train.eval_tasks` held-out goals, `trials` trials
    of `rounds` episodes each (round k = episode k); success per round, mean and stderr over goals."""
    tasks = task_distribution(cfg).tasks("test")[: cfg.train.eval_tasks]
    per_goal = []
    for i, task in enumerate(tasks):
        arrays = rollout_trials(envs[:trials], policy, task.params, cfg.fleet.horizon, ROLLOUT_SEED + 7919 * i, False,
                                rounds, None, success_rule(task.family))
        per_goal.append(arrays["success"].reshape(trials, rounds).mean(0))
    per_goal = np.asarray(per_goal)
    return {"tasks": len(tasks), "trials_per_task": trials, "per_task": np.round(per_goal, 4).tolist(),
            "success_per_round": np.round(per_goal.mean(0), 4).tolist(),
            "success_stderr": np.round(per_goal.std(0, ddof=1) / np.sqrt(len(tasks)), 4).tolist()}


def paired(before: np.ndarray, after: np.ndarray) -> dict:
    """after - before per column, mean and stderr of the paired differences over rows (same goals, same seeds)."""
    diff = np.asarray(after, float) - np.asarray(before, float)
    return {"mean": np.round(diff.mean(0), 4).tolist(),
            "stderr": np.round(diff.std(0, ddof=1) / np.sqrt(len(diff)), 4).tolist()}


def compare(before: dict, after: dict) -> dict:
    """The fix against no fix on the same trials: the probes draw from their own stream, so a trial where recovery
    never fired is identical in both; the paired differences of success per episode (fresh goals, per trial) and
    per round (held-out, per task)."""
    trials_b = [t for goal in before["per_goal"] for t in goal]
    trials_a = [t for goal in after["per_goal"] for t in goal]
    same = [b == a for b, a in zip(trials_b, trials_a, strict=True)]
    return {"fresh_trials_identical": round(float(np.mean(same)), 4),
            "fresh_success_difference": paired([t["success"] for t in trials_b], [t["success"] for t in trials_a]),
            "held_out_success_difference": paired(before["held_out"]["per_task"], after["held_out"]["per_task"])}


def measure(artifact_dir: Path, goals_count: int, trials: int, heldout_trials: int) -> dict:
    """Both variants on the same weights: fresh goals in trials of EPISODES, and the held-out protocol."""
    artifact = PolicyArtifact.load(artifact_dir)
    cfg = load_config(CONFIG)
    dist = task_distribution(cfg)
    train_goals = [t.params for t in dist.tasks("train")]
    encoder = TaskVectorEncoder.from_tasks("params", [(t.family, t.task_id, t.params) for t in dist.tasks("train")])
    goals = fresh_goals(goals_count, train_goals + [t.params for t in dist.tasks("test")])
    robot, horizon = robot_of(cfg), cfg.fleet.horizon
    envs = [fleet.make_env("reach", robot, horizon) for _ in range(max(trials, heldout_trials))]
    radius = float(envs[0].unwrapped.success_radius)
    variants = {}
    for name, recover in (("before", False), ("after", True)):
        policy = NumpyBeliefPolicy(artifact.weights, recover=recover)
        started = time.perf_counter()
        records = [run_goal(policy, envs[:trials], g, EPISODES, horizon, ROLLOUT_SEED + 104_729 * i, encoder, radius)
                   for i, g in enumerate(goals)]
        fresh = summarise(goals, records, EPISODES)
        fresh["recoveries_per_episode"] = round(policy.recoveries / fresh["episodes"], 3)
        policy.recoveries = 0
        heldout = held_out(policy, cfg, envs, heldout_trials, len(cfg.train.eval_steps))
        heldout["recoveries_per_episode"] = round(policy.recoveries / (heldout["tasks"] * heldout_trials
                                                                       * len(cfg.train.eval_steps)), 3)
        variants[name] = {"recover": recover, "fresh_goals": fresh, "held_out": heldout,
                          "per_goal": records, "seconds": round(time.perf_counter() - started, 1)}
        print(f"{name:6s} success per episode {fresh['success_per_episode']} confident-wrong "
              f"{fresh['confident_wrong_fraction']:.3f} never recovered {len(fresh['goals_never_recovered'])} goals | "
              f"held-out success per round {heldout['success_per_round']}", flush=True)
    return {"policy": {"version": artifact.weights.version, "content_sha256": artifact.digest,
                       "settings": dict(zip(SETTINGS, artifact.weights.arrays["belief.settings"].tolist()))},
            "goal_seed": GOAL_SEED, "rollout_seed": ROLLOUT_SEED, "goals": [g["goal"] for g in goals],
            "episodes_per_trial": EPISODES, "trials_per_goal": trials, "success_radius_m": radius,
            "confident_wrong_rule": "belief spread sqrt(sum_d std_d^2) (metres) < success radius and "
                                    "|belief mean - goal| > success radius, at the episode's end",
            "variants": variants, "after_minus_before": compare(variants["before"], variants["after"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", type=Path, required=True, help="the PolicyArtifact directory (temp: not committed)")
    parser.add_argument("--train", type=int, metavar="ITERATIONS", help="train configs/reach.yaml first, into --policy")
    parser.add_argument("--goals", type=int, default=40, help="fresh goals (>= 30)")
    parser.add_argument("--trials", type=int, default=3, help="trials of 5 episodes per fresh goal")
    parser.add_argument("--heldout-trials", type=int, default=10, help="trials per held-out goal (main protocol)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    prov = provenance.start("belief_robustness.py", argv)
    if args.train:
        print(train_policy(args.train, args.policy))
        return 0
    data = measure(args.policy, args.goals, args.trials, args.heldout_trials)
    print("after - before (paired):", data["after_minus_before"])
    provenance.write(args.out, data, prov)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
