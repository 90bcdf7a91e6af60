"""RL^2 (Duan et al. 2016; Wang et al. 2016): black-box meta-RL. A GRU policy sees (obs, previous
action, previous reward, done flag) and keeps its hidden state across the `trial_episodes`
episodes of a trial, so adapting to a task happens in the hidden state, not by gradient steps.

Training is PPO over whole trials: the GRU is unrolled from a zero state through every episode of
a trial (BPTT through the full trial), returns and GAE run across episode boundaries within a
trial (the value of the next episode's first state is what the agent has learnt so far), with
a per-task linear feature baseline whose time feature is the step within the trial. Support and
query requests are both collected with theta, so `update` trains on both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fleet.robots import RobotSpec
from fleet.tasks import Task
from learner.adaptation import Params, TaskData, select
from learner.base import MetaLearner
from learner.config import LearnerConfig
from learner.losses import (
    discounted_returns,
    gae,
    linear_baseline_values,
    masked_mean,
    normalize_advantages,
    ppo_clip_loss,
)
from learner.networks import gaussian_log_prob
from learner.recurrent import GaussianGRUPolicy, recurrent_spec
from policy import PolicySpec, PolicyWeights
from workers.batch import Batch, SampleRequest

EVAL_PHASE_KEY = 11  # request-seed key of in-context evaluation (gradient evaluation uses 7)


class InContextLearnerError(ValueError):
    """Gradient adaptation asked of a learner that adapts in its hidden state."""


class RL2(MetaLearner):
    """Recurrent policy trained with PPO over trials; `adapt` does not apply (see `evaluate_in_context`)."""

    algorithm = "rl2"

    def __init__(self, spec: PolicySpec, config: LearnerConfig, train_tasks: Sequence[Task] = ()):
        super().__init__(spec, config, train_tasks)
        self.trial_episodes = config.trial_episodes
        self.spec = recurrent_spec(spec, config.rl2_hidden)
        self.policy = GaussianGRUPolicy(self.spec, config.init_std).to(self.device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.outer_lr)

    # ---- the interface -------------------------------------------------------------------
    def adapt_for_training(self, support: Sequence[Batch], version: str) -> list[PolicyWeights]:
        # Adaptation happens inside each trial: query trials run theta too (fresh on-policy data).
        return [self.policy_weights(version)] * len(support)

    def adapt(self, support: Sequence[Batch], version: str, params: Params | None = None,
              steps: int = 1) -> tuple[Params, list[PolicyWeights]]:
        raise InContextLearnerError(
            "rl2 adapts in context (its GRU state over a trial), not by gradient steps: there is no adapted "
            "policy to build; evaluate it with meta_evaluate / `fleet eval` (in-context trials) instead")

    def update(self, support: Sequence[Batch], query: Sequence[Batch]) -> dict[str, float]:
        data = self.prepare([*support, *query])
        for _ in range(self.config.ppo_epochs):
            for idx in self.task_minibatches(len(support) + len(query)):
                minibatch = select(data, idx)
                metrics = self.ppo_step(*self.trial_terms(minibatch), minibatch["task_weight"])
        return metrics

    # ---- trials --------------------------------------------------------------------------
    def prepare(self, batches: Sequence[Batch]) -> TaskData:
        """Stack batches as trials [N, trials, T = n * H, ...]; returns and GAE run across episode
        boundaries within a trial; advantages normalised per task (or over all, `normalization: global`);
        "task_weight" [N] as in `MetaLearner.prepare`."""
        cfg, n = self.config, self.trial_episodes
        for b in batches:
            if b.trial_episodes != n or b.num_episodes % n:
                raise ValueError(f"rl2 needs batches of whole trials of {n} episodes, got {b.num_episodes} "
                                 f"episodes with trial_episodes={b.trial_episodes} (task {b.task.task_id})")
        horizon = batches[0].obs.shape[1]
        stacked = {key: np.stack([_as_trials(getattr(b, key), n) for b in batches])
                   for key in ("obs", "actions", "logp", "rewards", "mask")}
        t = {k: torch.as_tensor(v, dtype=torch.float32, device=self.device) for k, v in stacked.items()}
        returns = discounted_returns(t["rewards"], t["mask"], cfg.gamma)
        values = torch.stack([linear_baseline_values(o, r, m) for o, r, m in zip(t["obs"], returns, t["mask"])])
        adv = gae(t["rewards"], values, t["mask"], cfg.gamma, cfg.gae_lambda)
        if cfg.normalization == "global":
            adv = normalize_advantages(adv, t["mask"])
        else:
            adv = torch.stack([normalize_advantages(a, m) for a, m in zip(adv, t["mask"])])
        horizon_tensor = torch.full((len(batches),), horizon, device=self.device)
        weights = [cfg.task_weights.get(b.task.task_id, cfg.task_weights.get(b.task.family, 1.0)) for b in batches]
        return {"obs": t["obs"], "actions": t["actions"], "rewards": t["rewards"], "logp_old": t["logp"],
                "adv": adv, "mask": t["mask"], "horizon": horizon_tensor,
                "task_weight": torch.tensor(weights, dtype=torch.float32, device=self.device)}

    def trial_terms(self, data: TaskData) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-task PPO-clip losses and approximate KLs, the GRU unrolled over every trial at once."""
        tasks, trials, steps = data["mask"].shape
        flat = {k: data[k].reshape(tasks * trials, steps, *data[k].shape[3:])
                for k in ("obs", "actions", "rewards", "mask")}
        mean = self.policy.trial_mean(flat["obs"], flat["actions"], flat["rewards"], flat["mask"],
                                      int(data["horizon"][0]))
        logp = gaussian_log_prob(mean, self.policy.log_std, flat["actions"]).reshape(tasks, trials, steps)
        losses = torch.stack([ppo_clip_loss(logp[i], data["logp_old"][i], data["adv"][i], data["mask"][i],
                                            self.config.clip) for i in range(tasks)])
        kls = torch.stack([masked_mean(data["logp_old"][i] - logp[i], data["mask"][i]) for i in range(tasks)])
        return losses, kls

    def evaluate_in_context(self, pool, tasks: Sequence[Task], robot: RobotSpec, steps: Sequence[int],
                            episodes: int, horizon: int, seed: int, version: str):
        """`episodes` trials of max(steps)+1 episodes per held-out task; "step k" is the return and
        success of each trial's episode k (after k episodes of context), as an `EvalResult`."""
        from learner.evaluation import EvalResult, request_seed  # evaluation imports the learner base

        n = max(steps) + 1
        weights = self.policy_weights(f"{version}/theta")
        requests = [SampleRequest(task, robot, weights.version, episodes * n, horizon,
                                  request_seed(seed, i, EVAL_PHASE_KEY), "eval", trial_episodes=n)
                    for i, task in enumerate(tasks)]
        batches = pool.sample(requests, {weights.version: weights})
        result = EvalResult(steps=list(steps), task_ids=[t.task_id for t in tasks],
                            env_steps=sum(b.num_steps for b in batches))
        for k in steps:
            result.returns[k] = [float(b.episode_returns().reshape(-1, n)[:, k].mean()) for b in batches]
            result.successes[k] = [float(b.success.reshape(-1, n)[:, k].mean()) for b in batches]
        return result


def _as_trials(array: np.ndarray, n: int) -> np.ndarray:
    """[trials * n, H, ...] (trial-major) -> [trials, n * H, ...]: each trial one long sequence."""
    return array.reshape(array.shape[0] // n, n * array.shape[1], *array.shape[2:])
