"""Every policy kind on RobotRuntime and in PolicyModel, without training: hand-built numpy weights.

Fast checks of what the runtime must reproduce from training: the RL^2 trial and the RMA history (state, previous
action and reward, done flag) exactly as workers.recurrent.rollout_trials drives them, the task vector of a
conditioned policy, PEARL's posterior, a mixture's family, and any recurrent-style policy through the generic
interface. RMA's on-robot adaptation and fixed-latent version: tests/deploy/test_runtime_rma.py.
"""

import json

import numpy as np
import pytest

from deploy.robot import Step
from deploy.runtime import RobotRuntime
from deploy.safety import SafetyConfig
from deploy.serving import PolicyModel
from fleet.tasks import Task
from learner.conditioning import TaskEncoder
from policy import PolicySpec, PolicyWeights, make_policy
from policy.artifact import ArtifactError, PolicyArtifact
from policy.belief import flat_size
from tests.fakes import PointEnv
from workers.recurrent import rollout_trials

TRAIN = [Task("point", f"point/train/{i}", {"goal": [0.3 * i - 0.4, 0.2 - 0.1 * i]}) for i in range(4)]
SPACES = {"observation": {"shape": [2], "low": [-2.0, -2.0], "high": [2.0, 2.0], "dtype": "float32"},
          "action": {"shape": [2], "low": [-1.0, -1.0], "high": [1.0, 1.0], "dtype": "float32"}}
NO_RATE = SafetyConfig(max_action_rate=None)


def artifact(spec: PolicySpec, seed: int = 0, **manifest) -> PolicyArtifact:
    rng = np.random.default_rng(seed)
    arrays = {k: rng.normal(0, 0.5, shape).astype(np.float32) for k, shape in spec.weight_shapes().items()}
    arrays["obs_mean"], arrays["obs_std"] = np.zeros(spec.obs_dim, np.float32), np.ones(spec.obs_dim, np.float32)
    if spec.kind == "rma":
        arrays["rma.mode"] = np.ones(1, np.float32)  # adaptive (z from the robot's own history): what is published
    fleet = {"family": "point", "horizon": 6, **manifest.pop("fleet", {})}
    return PolicyArtifact.build(PolicyWeights(spec, arrays, "t"), spaces=SPACES, fleet=fleet, **manifest)


def saved(tmp_path, art: PolicyArtifact) -> str:
    art.save(tmp_path / "policy")
    return str(tmp_path / "policy")


class PointRobot:
    """PointEnv behind the Robot protocol; records the actions it receives."""

    def __init__(self, horizon: int = 6):
        self.env = PointEnv(horizon)
        self.observation_shape = (2,)
        self.action_low, self.action_high = -np.ones(2, np.float32), np.ones(2, np.float32)
        self.actions: list[np.ndarray] = []
        self.tasks: list = []

    def reset(self, task=None, seed=None):
        self.tasks.append(task)
        return self.env.reset(seed=seed, options={"task": task or {"goal": [0.0, 0.0]}})[0]

    def observe(self):
        return self.env.pos.copy()

    def act(self, action):
        self.actions.append(np.asarray(action, np.float32))
        obs, reward, _, truncated, info = self.env.step(action)
        return Step(obs, reward, truncated, info)

    def close(self):
        pass


RMA = PolicySpec(2, 2, (16,), conditioning="film", context_dim=3, kind="rma", model_sizes=(8,), privileged_dim=4,
                 history=3, encoder_sizes=(4,))
RECURRENT = {"rl2": PolicySpec(2, 2, (8,), kind="rl2"), "rma": RMA}


@pytest.mark.parametrize("kind", list(RECURRENT))
def test_a_recurrent_trial_on_the_runtime_is_the_training_rollout(tmp_path, kind):
    art = artifact(RECURRENT[kind], learner={"trial_episodes": 3})
    runtime = RobotRuntime(saved(tmp_path, art), NO_RATE)
    assert runtime.trial_episodes == 3  # the manifest's
    task, seed = {"goal": [0.3, -0.2]}, 11
    expected = rollout_trials([PointEnv(6)], make_policy(art.weights), task, 6, seed, deterministic=True,
                              trial_episodes=3)
    env_seeds = np.random.SeedSequence(seed).generate_state(3)
    robot = PointRobot()
    results = [runtime.run_episode(robot, task=task, seed=int(s)) for s in env_seeds]
    assert [r["trial_episode"] for r in results] == [1, 2, 3]
    np.testing.assert_allclose(np.stack(robot.actions).reshape(3, 6, 2), np.clip(expected["actions"], -1, 1),
                               atol=1e-6)
    # a fourth episode starts a new trial (trial_episodes = 3): the first episode's actions again
    robot.actions.clear()
    assert runtime.run_episode(robot, task=task, seed=int(env_seeds[0]))["trial_episode"] == 1
    np.testing.assert_allclose(np.stack(robot.actions), np.clip(expected["actions"][0], -1, 1), atol=1e-6)


def test_rl2_state_carries_unless_reset_on_request(tmp_path):
    runtime = RobotRuntime(saved(tmp_path, artifact(PolicySpec(2, 2, (8,), kind="rl2"))), NO_RATE)
    assert runtime.trial_episodes is None  # no learner.trial_episodes in this manifest: one long trial
    robot = PointRobot()
    first = runtime.run_episode(robot, seed=3)
    carried = [runtime.run_episode(robot, seed=3)["trial_episode"] for _ in range(3)]
    assert carried == [2, 3, 4]
    reset = runtime.run_episode(robot, seed=3, reset_trial=True)
    assert reset == first  # a reset trial replays the first episode exactly
    with pytest.raises(ValueError, match="trial_episodes must be a positive int"):
        RobotRuntime(saved(tmp_path, artifact(PolicySpec(2, 2, (8,), kind="rl2"))), trial_episodes=0)


class BeliefLikePolicy:
    """Any recurrent-style policy (the interface a "belief" policy has): a non-array state, no GRU."""

    recurrent = True

    def __init__(self, act_dim):
        self.spec = PolicySpec(2, act_dim, (4,))
        self.version = "belief"
        self.calls = []

    def initial_state(self, batch):
        return {"steps": np.zeros(batch)}

    def sample_step(self, obs, prev_action, prev_reward, prev_done, state, rng, deterministic=False):
        self.calls.append((prev_action.copy(), prev_reward.copy(), prev_done.copy(), state["steps"].copy()))
        return np.full((1, 2), 0.1, np.float32), np.zeros(1, np.float32), {"steps": state["steps"] + 1}


def test_any_recurrent_policy_runs_through_the_generic_interface(tmp_path):
    runtime = RobotRuntime(saved(tmp_path, artifact(PolicySpec(2, 2, (16,)))), NO_RATE, trial_episodes=2)
    runtime.driver.policy = policy = BeliefLikePolicy(2)  # as policy.make_policy would return for a new kind
    runtime.driver.recurrent = True
    robot = PointRobot()
    for seed in range(3):
        runtime.run_episode(robot, seed=seed)
    steps = [int(c[3][0]) for c in policy.calls]
    assert steps == [*range(12), *range(6)]  # state carried over 2 episodes, then a new trial
    done = [float(c[2][0]) for c in policy.calls]
    assert done[0] == 0 and done[6] == 1 and done[12] == 0 and sum(done) == 1  # first step of episode 2 only
    assert np.allclose(policy.calls[6][0], 0.1) and policy.calls[6][1][0] != 0  # previous action and reward


def conditioned(tmp_path, mode: str, encoding: str) -> tuple[str, TaskEncoder]:
    encoder = TaskEncoder(encoding, TRAIN)
    heads = encoder.dim if mode == "multihead" else 1
    spec = PolicySpec(2, 2, (16,), conditioning=mode, context_dim=encoder.dim, num_heads=heads)
    section = json.loads(json.dumps({"mode": mode, **encoder.to_manifest()}))
    return saved(tmp_path, artifact(spec, conditioning=section)), encoder


@pytest.mark.parametrize("mode,encoding", [("concat", "params"), ("additive", "params"), ("film", "onehot"),
                                           ("multihead", "onehot")])
def test_conditioned_policy_acts_on_the_training_task_vector(tmp_path, mode, encoding):
    path, encoder = conditioned(tmp_path, mode, encoding)
    runtime = RobotRuntime(path, NO_RATE)
    with pytest.raises(ValueError, match=r"task-conditioned .* name the task, e.g. --task KEY=VALUE .*\['goal'\]"):
        runtime.set_task(None)
    for task in (TRAIN[2], Task("point", "point/test/0", {"goal": [0.05, 0.05]})):
        runtime.set_task(dict(task.params))
        vector = np.asarray(encoder.encode(task), np.float32)
        np.testing.assert_array_equal(runtime.driver.context, vector)
        obs = np.asarray([0.1, -0.2], np.float32)
        np.testing.assert_allclose(runtime.act(obs)[1]["proposed"], runtime.policy.mean(obs[None], vector)[0],
                                   atol=1e-6)
        model = PolicyModel.from_artifact(PolicyArtifact.load(path))
        served = model.predict(None, {"obs": [obs.tolist()], "task": [json.dumps(task.params)]})
        # served actions come back within the action bounds (the safety layer's clip; docs/security.md)
        np.testing.assert_allclose(served["action"][0], np.clip(runtime.policy.mean(obs[None], vector)[0], -1, 1),
                                   atol=1e-6)
    assert runtime.driver.task_held_out  # the last one


def test_a_conditioned_manifest_without_its_encoder_is_refused(tmp_path):
    spec = PolicySpec(2, 2, (16,), conditioning="concat", context_dim=2)
    with pytest.raises(ArtifactError, match="manifest has no 'conditioning' section"):
        RobotRuntime(saved(tmp_path, artifact(spec)))


def test_mixture_runs_the_named_family_or_the_default_never_silently_the_first(tmp_path):
    mixture = {"family": {"point": 1.0, "other": 1.0}}
    runtime = RobotRuntime(saved(tmp_path, artifact(PolicySpec(2, 2, (16,)), fleet=mixture)), NO_RATE)
    with pytest.raises(ValueError, match=r"mixture of families \['other', 'point'\] .* pass --task family=NAME"):
        runtime.set_task(None)
    with pytest.raises(ValueError, match=r"unknown family 'reach'"):
        runtime.set_task({"family": "reach"})
    robot = PointRobot()
    runtime.run_episode(robot, task={"family": "point", "goal": [0.2, 0.2]}, seed=0)
    assert runtime.family == "point" and robot.tasks[-1] == {"goal": [0.2, 0.2]}  # family never sent as a param
    with_default = RobotRuntime(saved(tmp_path, artifact(PolicySpec(2, 2, (16,)), fleet=mixture,
                                                          default_family="other")))
    assert with_default.set_task(None) == "other"


def test_pearl_adapts_on_the_robot_with_the_numpy_posterior(tmp_path):
    spec = PolicySpec(2, 2, (16,), "relu", "pearl", "concat", 3)
    runtime = RobotRuntime(saved(tmp_path, artifact(spec)), NO_RATE)
    robot = PointRobot()
    out = runtime.adapt(robot, episodes=3, task={"goal": [0.3, 0.3]}, seed=5)
    assert len(out["episodes"]) == 3 and out["transitions"] == 18
    assert out["collect_s"] > 0 and 0 < out["infer_s"] < out["adapt_s"]
    obs, actions, rewards, next_obs = (np.asarray(x) for x in zip(*runtime.driver.transitions))
    mu, var = runtime.driver.encoder.posterior(obs, actions, rewards, next_obs)
    np.testing.assert_allclose(out["mu"], mu) and np.testing.assert_allclose(out["var"], var)
    assert np.all(np.asarray(out["var"]) < 1)  # 18 transitions narrow the prior
    np.testing.assert_array_equal(runtime.driver.context, np.asarray(out["z"], np.float32))
    model = PolicyModel.from_artifact(PolicyArtifact.load(tmp_path / "policy"))
    served = model.predict(None, {"obs": [[0.1, 0.1]], "context_obs": [obs.tolist()],
                                  "context_actions": [actions.tolist()], "context_rewards": [rewards.tolist()],
                                  "context_next_obs": [next_obs.tolist()]})
    np.testing.assert_allclose(served["z"][0], mu, atol=1e-6)
    with pytest.raises(ValueError, match=r"a .z. column .* or the context transitions"):
        model.predict(None, {"obs": [[0.1, 0.1]]})
    with pytest.raises(ValueError, match="on-robot adaptation infers a task latent: it needs a PEARL"):
        RobotRuntime(saved(tmp_path, artifact(PolicySpec(2, 2, (16,))))).adapt(robot, 1)


@pytest.mark.parametrize("kind", list(RECURRENT))
def test_serving_carries_a_recurrent_state_in_and_out(tmp_path, kind):
    path = saved(tmp_path, artifact(RECURRENT[kind], learner={"trial_episodes": 2}))
    model = PolicyModel.from_artifact(PolicyArtifact.load(path))
    runtime, robot = RobotRuntime(path, NO_RATE), PointRobot()
    runtime.run_episode(robot, seed=1)
    runtime.run_episode(robot, seed=2)
    # replay the robot's trial through stateless serving: state, previous action/reward/done travel with requests
    env, state, prev, reward, served = PointEnv(6), [], [0.0, 0.0], 0.0, []
    for e, seed in enumerate((1, 2)):
        obs = env.reset(seed=seed, options={"task": {"goal": [0.0, 0.0]}})[0]
        for t in range(6):
            out = model.predict(None, {"obs": [obs.tolist()], "state": [state], "prev_action": [prev],
                                       "prev_reward": [reward], "prev_done": [1.0 if e and not t else 0.0]})
            state, prev = out["state"][0], out["action"][0]
            served.append(prev)
            obs, reward, *_ = env.step(np.asarray(prev, np.float32))
    np.testing.assert_allclose(np.clip(served, -1, 1), np.stack(robot.actions), atol=1e-6)
    with pytest.raises(ValueError, match="needs named columns, not bare observations: state, prev_action"):
        model.predict(None, np.zeros((1, 2), np.float32))


ROBOT_SIDE = r'''
import sys, json, tempfile
import numpy as np
from deploy.robot import Step
from deploy.runtime import RobotRuntime
from policy import PolicySpec, PolicyWeights
from policy.artifact import PolicyArtifact

class Robot:
    observation_shape, action_low, action_high = (2,), -np.ones(2, np.float32), np.ones(2, np.float32)
    def reset(self, task=None, seed=None): self.t = 0; return np.zeros(2, np.float32)
    def observe(self): return np.zeros(2, np.float32)
    def act(self, a): self.t += 1; return Step(np.full(2, 0.1 * self.t, np.float32), -1.0, self.t >= 4, {})
    def close(self): pass

spaces = {"observation": {"shape": [2], "low": [-2, -2], "high": [2, 2]},
          "action": {"shape": [2], "low": [-1, -1], "high": [1, 1]}}
train = [{"family": "point", "task_id": f"point/train/{i}", "params": {"goal": [i, -i]}} for i in range(3)]
specs = {"rl2": (PolicySpec(2, 2, (8,), kind="rl2"), {}),
         "pearl": (PolicySpec(2, 2, (8,), "relu", "pearl", "concat", 2), {}),
         "belief": (PolicySpec(2, 2, (8,), kind="belief", conditioning="concat", context_dim=2, model_sizes=(4,)), {}),
         "film": (PolicySpec(2, 2, (8,), conditioning="film", context_dim=3),
                  {"conditioning": {"mode": "film", "encoding": "onehot", "train_tasks": train}}),
         "rma": (PolicySpec(2, 2, (8,), kind="rma", conditioning="film", context_dim=2, model_sizes=(4,),
                            privileged_dim=3, history=2, encoder_sizes=(4,)), {})}
for name, (spec, extra) in specs.items():
    arrays = {k: np.full(s, 0.1, np.float32) for k, s in spec.weight_shapes().items()}
    arrays.update({"belief.low": -np.ones(2, np.float32), "belief.settings": np.asarray([16, 1, 1.0, 0.1], np.float32)}
                  if name == "belief" else {"rma.mode": np.ones(1, np.float32)} if name == "rma" else {})
    directory = tempfile.mkdtemp()
    PolicyArtifact.build(PolicyWeights(spec, arrays), spaces=spaces, fleet={"family": "point", "horizon": 4},
                         **extra).save(directory)
    runtime = RobotRuntime(directory)
    runtime.run_episode(Robot(), task={"goal": [1, -1]}, seed=0)
    if name in ("pearl", "belief", "rma"):
        runtime.adapt(Robot(), 2, seed=0)
forbidden = ("torch", "ray", "mlflow", "pybullet", "gymnasium", "learner", "workers", "fleet", "yaml", "pandas")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in forbidden)))
'''


def test_the_robot_side_runs_every_kind_with_numpy_and_safetensors_only():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", ROBOT_SIDE], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_a_belief_policy_runs_on_the_runtime_as_any_recurrent_policy(tmp_path):
    spec = PolicySpec(2, 2, (16,), conditioning="concat", context_dim=2, kind="belief", model_sizes=(8,))
    art = artifact(spec)
    art.weights.arrays.update({"belief.low": np.full(2, -0.5, np.float32), "belief.high": np.full(2, 0.5, np.float32),
                               "belief.settings": np.asarray([32, 5, 1.0, 0.01], np.float32)})
    runtime = RobotRuntime(saved(tmp_path, art), NO_RATE, trial_episodes=2)
    assert runtime.driver.recurrent and not runtime.driver.conditioned  # it infers its task vector itself
    robot = PointRobot()
    results = [runtime.run_episode(robot, task={"goal": [0.3, 0.3]}, seed=s) for s in range(3)]
    assert [r["trial_episode"] for r in results] == [1, 2, 1] and all(r["steps"] == 6 for r in results)
    assert np.isfinite(np.stack(robot.actions)).all()
    model = PolicyModel.from_artifact(PolicyArtifact.load(tmp_path / "policy"))
    out = model.predict(None, {"obs": [[0.0, 0.0]]})  # no state: the prior
    assert len(out["state"][0]) == flat_size(32, 2, 2) and np.isfinite(out["action"]).all()


# ---- belief: the state travels, adaptation on the robot, the adapted version's fixed task vector ---------------
BELIEF_TRAIN = [Task("point", f"point/train/{i}", {"k": k}) for i, k in enumerate((-1.0, 1.0))]  # box [-1, 1]


class ConstantRewardRobot(PointRobot):
    """Every step pays 0.5: a belief whose task model says r = z settles on z = 0.5."""

    def act(self, action):
        step = super().act(action)
        return Step(step.observation, 0.5, step.done, step.info)


def belief_path(tmp_path) -> str:
    from tests.policy.test_belief_policy import belief_weights

    art = PolicyArtifact.build(belief_weights(settings=(64, 1, 0.05, 0.2)), spaces=SPACES,
                               fleet={"family": "point", "horizon": 6}, learner={"trial_episodes": 2})
    return saved(tmp_path, art)


def test_a_belief_state_round_trips_through_arrays_and_stateless_serving(tmp_path):
    from policy.belief import BeliefState

    path = belief_path(tmp_path)
    model = PolicyModel.from_artifact(PolicyArtifact.load(path))
    policy, rng = model.policy, np.random.default_rng(3)
    state = policy.initial_state(2, rng)
    policy.sample_step(np.ones((2, 2), np.float32), np.zeros((2, 2)), np.zeros(2), np.zeros(2), state, rng)
    policy.sample_step(np.zeros((2, 2), np.float32), np.ones((2, 2)), np.full(2, 0.5), np.zeros(2), state, rng)
    back = BeliefState.from_arrays(state.to_arrays(), 64, 1, 2)
    flat = BeliefState.from_flat(state.to_flat(), 64, 1, 2)
    for other in (back, flat):
        for key, value in state.to_arrays().items():
            np.testing.assert_array_equal(other.to_arrays()[key], value)
    bad = state.to_arrays() | {"z": np.zeros((2, 3))}
    with pytest.raises(ValueError, match=r"'z' has shape \(2, 3\); this policy expects \(2, 1\)"):
        BeliefState.from_arrays(bad, 64, 1, 2)
    with pytest.raises(ValueError, match="'log_weights' holds non-finite values"):
        BeliefState.from_arrays(state.to_arrays() | {"log_weights": np.full((2, 64), np.nan)}, 64, 1, 2)
    with pytest.raises(ValueError, match="lacks \\['prev_obs'\\]"):
        BeliefState.from_arrays({k: v for k, v in state.to_arrays().items() if k != "prev_obs"}, 64, 1, 2)
    with pytest.raises(ValueError, match="rows of 132 numbers"):
        BeliefState.from_flat(np.zeros((1, 5)), 64, 1, 2)
    # serving: no state = the prior; the state goes out and comes back; each step is the policy's own
    obs, served, direct = [[0.1, 0.2]], [], policy.initial_state(1)
    state_in, prev, reward = [], [0.0, 0.0], 0.0
    for _ in range(4):
        out = model.predict(None, {"obs": [obs[0]], "state": [state_in], "prev_action": [prev],
                                   "prev_reward": [reward], "prev_done": [0.0]})
        actions, _, direct = policy.sample_step(np.asarray(obs, np.float32), np.asarray([prev], np.float32),
                                                np.asarray([reward], np.float32), np.zeros(1, np.float32), direct,
                                                np.random.default_rng(0), True)
        np.testing.assert_allclose(out["action"], actions, atol=1e-6)
        np.testing.assert_allclose(out["state"], direct.to_flat(), atol=1e-6)
        state_in, prev, reward = out["state"][0], out["action"][0], 0.5
        served.append(out["belief_mean"][0][0])
    assert abs(served[-1] - 0.5) < abs(served[0] - 0.5)  # rewards of 0.5 pull the belief to z = 0.5
    with pytest.raises(ValueError, match="'state' row 0 has 3 numbers; this belief policy's state has 132"):
        model.predict(None, {"obs": [[0.0, 0.0]], "state": [[1.0, 2.0, 3.0]]})
    with pytest.raises(ValueError, match="'log_weights' holds non-finite values"):
        model.predict(None, {"obs": [[0.0, 0.0]], "state": [[0.0] * 64 + [np.inf] + [0.0] * 67]})


def test_a_belief_policy_adapts_on_the_robot_and_registers_its_actor_with_a_fixed_task_vector(tmp_path):
    from deploy.adapt_context import fixed_actor

    path = belief_path(tmp_path)
    runtime, robot = RobotRuntime(path, NO_RATE), ConstantRewardRobot()
    runtime.use_prior()
    before = [runtime.run_episode(robot, seed=9) for _ in range(2)]
    assert before[0] == before[1] and runtime.driver.episodes_in_trial == 1  # a fresh belief each episode
    out = runtime.adapt(robot, episodes=3, seed=0)  # one trial of 3 episodes, whatever trial_episodes (2) says
    assert [r["trial_episode"] for r in out["episodes"]] == [1, 2, 3] and out["transitions"] == 18
    assert out["z"][0] == pytest.approx(0.5, abs=0.1) and out["std"][0] < 0.2
    assert out["policy_steps"] == 18 and 0 < out["infer_s"] < out["collect_s"] and out["policy_ms_per_step"] > 0
    robot.actions.clear()
    after = [runtime.run_episode(robot, seed=9) for _ in range(2)]
    assert after[0] == after[1] and after[0]["trial_episode"] == 4  # each starts from the belief the context left
    np.testing.assert_allclose(robot.actions[0], [0.5, -0.5], atol=0.15)  # acts on what it believes
    # the adapted version: the actor with the belief's mean fixed as its task vector; no task needed
    meta = PolicyArtifact.load(path)
    weights, section = fixed_actor(meta, BELIEF_TRAIN, out["z"])
    assert weights.spec.kind == "mlp" and weights.spec.conditioning == "concat" and "belief.low" not in weights.arrays
    assert section["fixed"]["vector"] == out["z"] and section["encoding"] == "params"
    assert section["fixed"]["param_values"] == pytest.approx(out["z"])  # k in [-1, 1]: mean 0, std 1
    adapted = saved(tmp_path / "adapted", PolicyArtifact.build(weights, spaces=SPACES, conditioning=section,
                                                              fleet={"family": "point", "horizon": 6}))
    fixed = RobotRuntime(adapted, NO_RATE)
    fixed.set_task(None)  # needs no --task; a named task goes to the robot, the vector stays
    np.testing.assert_array_equal(fixed.driver.context, np.asarray(out["z"], np.float32))
    obs = np.asarray([0.1, -0.2], np.float32)
    expected = runtime.policy.actor.mean(obs[None], np.asarray([out["z"]], np.float32))[0]
    np.testing.assert_allclose(fixed.act(obs)[1]["proposed"], expected, atol=1e-6)
    fixed.set_task({"k": -1.0})
    np.testing.assert_array_equal(fixed.driver.context, np.asarray(out["z"], np.float32))
    served = PolicyModel.from_artifact(PolicyArtifact.load(adapted)).predict(None, {"obs": [obs.tolist()]})
    np.testing.assert_allclose(served["action"][0], expected, atol=1e-6)
    shifted = [Task("point", f"point/train/{i}", {"k": k}) for i, k in enumerate((0.0, 0.5, 3.0))]
    with pytest.raises(ValueError, match="do not rebuild the task vectors it was trained on"):
        fixed_actor(meta, shifted, out["z"])
    bad = {**section, "fixed": {"vector": [0.1, float("inf")]}}
    with pytest.raises(ArtifactError, match=r"'conditioning.fixed' must hold 'vector': 1 finite numbers"):
        RobotRuntime(saved(tmp_path / "bad", PolicyArtifact.build(weights, spaces=SPACES, conditioning=bad,
                                                                  fleet={"family": "point", "horizon": 6})))
