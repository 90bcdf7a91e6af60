"""An RMA policy (kind "rma", adaptive) on the robot runtime, hand-built weights: on-robot adaptation (the mean
latent estimate over the context episodes' steps), then z fixed - in the runtime, and as the registered version
`fleet adapt` builds (its actor with ``conditioning.fixed``), through `fleet run`'s runtime and stateless serving.
Its plain trial and serving state: tests/deploy/test_runtime_kinds.py (RECURRENT)."""

import numpy as np
import pytest

from deploy.adapt_context import fixed_latent_actor
from deploy.runtime import RobotRuntime
from deploy.serving import PolicyModel
from policy.artifact import ArtifactError, PolicyArtifact
from policy.driver import PolicyDriver
from tests.deploy.test_runtime_kinds import NO_RATE, RMA, SPACES, PointRobot, artifact, saved
from tests.fakes import PointEnv


def replayed_latents(policy, seeds, horizon: int = 6) -> np.ndarray:
    """z at every step of deterministic episodes from a fresh history each (what the context episodes do),
    stepped here directly through the numpy policy on the same env."""
    out = []
    for seed in seeds:
        env, state, prev = PointEnv(horizon), policy.initial_state(1), np.zeros((1, 2), np.float32)
        obs = env.reset(seed=seed, options={"task": {"goal": [0.0, 0.0]}})[0]
        for _ in range(horizon):
            action, _, state = policy.sample_step(obs[None], prev, np.zeros(1), np.zeros(1), state,
                                                  np.random.default_rng(0), True)
            out.append(policy.latent_from_history(obs[None], state)[0])
            prev = action
            obs, *_ = env.step(np.clip(action[0], -1, 1))
    return np.asarray(out)


def test_an_rma_policy_adapts_on_the_robot_to_the_mean_latent_then_acts_on_it(tmp_path):
    runtime, robot = RobotRuntime(saved(tmp_path, artifact(RMA)), NO_RATE), PointRobot()
    runtime.use_prior()
    before = [runtime.run_episode(robot, seed=9) for _ in range(2)]
    assert before[0]["return"] == before[1]["return"]  # a fresh history every episode: adapts within each
    out = runtime.adapt(robot, episodes=3, seed=4)
    latents = replayed_latents(runtime.policy, (4, 5, 6))
    np.testing.assert_allclose(out["z"], latents.mean(0), atol=1e-5)
    np.testing.assert_allclose(out["std"], latents.std(0), atol=1e-5)
    assert out["transitions"] == out["policy_steps"] == 18 and out["policy_ms_per_step"] > 0
    assert [r["steps"] for r in out["episodes"]] == [6, 6, 6] and 0 < out["infer_s"] < out["collect_s"]
    obs = np.asarray([0.1, -0.2], np.float32)
    z = np.asarray([out["z"]], np.float32)
    np.testing.assert_allclose(runtime.act(obs)[1]["proposed"], runtime.policy.actor.mean(obs[None], z)[0], atol=1e-6)
    runtime.use_prior()  # back to the running estimate
    assert runtime.driver.fixed_latent is None and runtime.run_episode(robot, seed=9)["return"] == before[0]["return"]


def test_the_adapted_version_is_the_actor_with_z_fixed_and_needs_no_task(tmp_path):
    meta = artifact(RMA)
    z = [0.3, -0.2, 0.5]
    weights, section = fixed_latent_actor(meta, z)
    assert weights.spec.kind == "mlp" and weights.spec.conditioning == "film" and weights.spec.context_dim == 3
    assert not any(k.startswith(("adaptation.", "extrinsics.", "rma.")) for k in weights.arrays)
    assert section == {"mode": "film", "fixed": {"vector": z, "from": section["fixed"]["from"]}}
    adapted = saved(tmp_path / "adapted", PolicyArtifact.build(weights, spaces=SPACES, conditioning=section,
                                                              fleet={"family": "point", "horizon": 6}))
    fixed = RobotRuntime(adapted, NO_RATE)
    fixed.set_task(None)  # no task encoding, no --task: z is the robot's latent
    assert fixed.driver.conditioned and fixed.driver.task_vectors is None and not fixed.driver.task_held_out
    obs = np.asarray([0.1, -0.2], np.float32)
    expected = PolicyDriver(meta.weights).policy.actor.mean(obs[None], np.asarray([z], np.float32))[0]
    np.testing.assert_allclose(fixed.act(obs)[1]["proposed"], expected, atol=1e-6)
    fixed.set_task({"goal": [0.2, 0.2]})  # a named task goes to the robot; z stays
    np.testing.assert_array_equal(fixed.driver.context, np.asarray(z, np.float32))
    served = PolicyModel.from_artifact(PolicyArtifact.load(adapted)).predict(None, {"obs": [obs.tolist()]})
    np.testing.assert_allclose(served["action"][0], np.clip(expected, -1, 1), atol=1e-6)
    assert fixed.run_episode(PointRobot(), seed=0)["steps"] == 6
    with pytest.raises(ValueError, match="the RMA latent estimate must be 3 finite numbers"):
        fixed_latent_actor(meta, [0.1, float("nan"), 0.0])
    bad = {**section, "fixed": {"vector": [0.1]}}
    with pytest.raises(ArtifactError, match=r"'conditioning.fixed' must hold 'vector': 3 finite numbers"):
        RobotRuntime(saved(tmp_path / "bad", PolicyArtifact.build(weights, spaces=SPACES, conditioning=bad,
                                                                  fleet={"family": "point", "horizon": 6})))


def test_only_an_rma_policy_fixes_a_latent(tmp_path):
    from policy import PolicySpec

    driver = PolicyDriver(artifact(PolicySpec(2, 2, (8,), kind="rl2")).weights)
    with pytest.raises(ValueError, match="only an RMA policy estimates a latent"):
        driver.fix_latent([0.0])
    with pytest.raises(ValueError, match="finite latent z of length 3"):
        PolicyDriver(artifact(RMA).weights).fix_latent([0.0, 1.0])
