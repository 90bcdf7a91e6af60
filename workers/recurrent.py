"""The trial rollout that drives a recurrent (RL^2) policy (`policy.rl2.NumpyRL2Policy`).

A trial is `trial_episodes` consecutive episodes of one task on one env; the GRU state carries
across the episodes of a trial and is reset only between trials, so the policy can learn the task
in its hidden state (Duan et al. 2016, Wang et al. 2016).
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np

from workers.rollout import empty_episodes, step_alive


def rollout_trials(
    envs: Sequence[gym.Env],
    policy,
    task_params: dict,
    horizon: int,
    seed: int,
    deterministic: bool = False,
    trial_episodes: int = 1,
    context: np.ndarray | None = None,
    success_at: str = "last",
) -> dict[str, np.ndarray]:
    """Run one trial of `trial_episodes` episodes per env, all envs in lockstep on the same task.

    Returns `workers.rollout.rollout`'s arrays with episodes trial-major: [trials * n, H, ...]
    (trial 0's episodes 0..n-1, then trial 1's, ...). Seeded like `rollout`: episode e of trial i
    resets with the (i * n + e)-th seed of `seed`, and action noise comes from a stream spawned from
    `seed` alone, so the result does not depend on the worker. Every step of every episode calls
    the policy (padding after an env's episode ended included, with mask 0), so the hidden state
    sequence is a function of the recorded arrays and the learner can recompute it exactly.
    A feed-forward policy is accepted too (episodes then only share the env). `success_at` as in `rollout`.
    """
    trials, n = len(envs), trial_episodes
    if trials < 1 or n < 1:
        raise ValueError(f"rollout_trials needs at least one env and trial_episodes >= 1, got {trials}, {n}")
    seeds = np.random.SeedSequence(seed)
    env_seeds, rng = seeds.generate_state(trials * n), np.random.default_rng(seeds.spawn(1)[0])
    act_dim = policy.spec.act_dim
    hidden = policy.initial_state(trials) if policy.recurrent else None
    prev_action, prev_reward = np.zeros((trials, act_dim), np.float32), np.zeros(trials, np.float32)
    parts = []
    for e in range(n):
        obs = np.stack([env.reset(seed=int(env_seeds[i * n + e]), options={"task": task_params})[0]
                        for i, env in enumerate(envs)]).astype(np.float32)
        out = empty_episodes(trials, horizon, obs.shape[1], act_dim)
        alive = np.ones(trials, bool)
        for t in range(horizon):
            if hidden is not None:
                done = np.full(trials, 1.0 if (e > 0 and t == 0) else 0.0, np.float32)
                actions, logp, hidden = policy.sample_step(obs, prev_action, prev_reward, done, hidden, rng,
                                                           deterministic)
            else:
                actions, logp = policy.sample(obs, rng, deterministic, context=context)
            out["obs"][:, t], out["actions"][:, t], out["logp"][:, t] = obs, actions, logp
            out["mask"][:, t] = alive
            step_alive(envs, actions, alive, obs, out, t, success_at)
            prev_action = actions * out["mask"][:, t, None]
            prev_reward = out["rewards"][:, t] * out["mask"][:, t]
        out["final_obs"] = obs.copy()
        parts.append(out)
    return _trial_major(parts)


def _trial_major(parts: list[dict]) -> dict:
    """Per-episode-index parts [trials, H, ...] -> one dict [trials * n, H, ...], trial-major."""
    out = {k: np.stack([p[k] for p in parts], axis=1) for k in parts[0] if k != "guard_trips"}
    out = {k: v.reshape(-1, *v.shape[2:]) for k, v in out.items()}
    out["guard_trips"] = sum(p["guard_trips"] for p in parts)
    return out
