"""A pure rollout: step a group of envs in lockstep with one batched policy call per step."""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np

from policy import NumpyGaussianPolicy

SUCCESS_RULES = ("last", "any")  # an episode succeeds if info["success"] holds at its last step / at any step


def rollout(
    envs: Sequence[gym.Env],
    policy: NumpyGaussianPolicy,
    task_params: dict,
    horizon: int,
    seed: int,
    deterministic: bool = False,
    context: np.ndarray | None = None,
    success_at: str = "last",
) -> dict[str, np.ndarray]:
    """Run one episode per env on the same task; return [E, H, ...] arrays.

    Env resets and action noise are drawn from `seed` alone, so the same call gives the same
    arrays on any worker. Steps after an env ends are padding (mask 0). A step whose info
    carries `guard` (the env's guard found a non-finite or exploding state and reset the env)
    ends the episode and gets mask 0, so learners drop it; `guard_trips` counts them. An episode's
    `success` is `info["success"]` of its last step (`success_at="last"`) or of any step (`"any"`).
    """
    n = len(envs)
    seeds = np.random.SeedSequence(seed)
    env_seeds, noise_seed = seeds.generate_state(n), seeds.spawn(1)[0]
    rng = np.random.default_rng(noise_seed)
    obs = np.stack([env.reset(seed=int(s), options={"task": task_params})[0] for env, s in zip(envs, env_seeds)])
    obs = obs.astype(np.float32)
    out = empty_episodes(n, horizon, obs.shape[1], policy.spec.act_dim)
    alive = np.ones(n, bool)
    for t in range(horizon):
        actions, logp = policy.sample(obs, rng, deterministic, context=context)
        out["obs"][:, t], out["actions"][:, t], out["logp"][:, t] = obs, actions, logp
        out["mask"][:, t] = alive
        step_alive(envs, actions, alive, obs, out, t, success_at)
        if not alive.any():
            break
    out["final_obs"] = obs.copy()  # step_alive wrote each env's observation after its last step here
    return out


def empty_episodes(n: int, horizon: int, obs_dim: int, act_dim: int) -> dict:
    """Zeroed [n, horizon, ...] episode arrays (mask 0 = padding until a step is taken)."""
    return {
        "obs": np.zeros((n, horizon, obs_dim), np.float32),
        "actions": np.zeros((n, horizon, act_dim), np.float32),
        "logp": np.zeros((n, horizon), np.float32),
        "rewards": np.zeros((n, horizon), np.float32),
        "mask": np.zeros((n, horizon), np.float32),
        "success": np.zeros(n, bool),
        "final_obs": np.zeros((n, obs_dim), np.float32),
        "guard_trips": 0,
    }


def step_alive(envs: Sequence[gym.Env], actions: np.ndarray, alive: np.ndarray, obs: np.ndarray, out: dict,
               t: int, success_at: str = "last") -> None:
    """Step every env still in its episode at time `t`, writing into `obs` and `out`; a guard trip ends
    the episode and masks the step (the learner drops it). `success_at="any"` keeps a success once seen."""
    if success_at not in SUCCESS_RULES:
        raise ValueError(f"success_at must be one of {SUCCESS_RULES}, got {success_at!r}")
    keep = success_at == "any"
    for i in np.flatnonzero(alive):
        next_obs, reward, terminated, truncated, info = envs[i].step(actions[i])
        obs[i] = next_obs
        out["rewards"][i, t] = reward
        out["success"][i] = bool(info.get("success", False)) or (keep and out["success"][i])
        if info.get("guard"):
            out["mask"][i, t] = 0.0
            out["guard_trips"] += 1
        if terminated or truncated or info.get("guard"):
            alive[i] = False
