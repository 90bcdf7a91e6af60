"""RL^2 (Duan et al. 2016; Wang et al. 2016): black-box meta-RL. A GRU policy sees (obs, previous
action, previous reward, done flag) and keeps its hidden state across the `trial_episodes`
episodes of a trial, so adapting to a task happens in the hidden state, not by gradient steps.

Training is PPO over whole trials: the GRU is unrolled from a zero state through every episode of
a trial (BPTT through the full trial), returns and GAE run across episode boundaries within a
trial (learner.data.prepare_trials), with a per-task linear feature baseline whose time feature is
the step within the trial. Support and query phases are both collected with theta, so `learn`
trains on both. Evaluation (`adaptation`) is one trial per episode group whose episode j measures
round j (j context episodes seen).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from learner.adaptation import Params, TaskData
from learner.base import MetaLearner
from learner.data import prepare_trials
from learner.interface import Collect, Plan
from learner.losses import masked_mean, ppo_clip_loss
from learner.networks import gaussian_log_prob
from learner.recurrent import GaussianGRUPolicy, recurrent_spec
from policy import PolicySpec, PolicyWeights
from workers.batch import Batch


class InContextLearnerError(ValueError):
    """Gradient adaptation asked of a learner that adapts in its hidden state."""


class RL2(MetaLearner):
    """Recurrent policy trained with PPO over trials; `adapt` does not apply (it adapts in context)."""

    algorithm = "rl2"

    @property
    def trial_episodes(self) -> int:  # type: ignore[override]  # from the config, not a class constant
        return self.config.trial_episodes

    @property
    def spec(self) -> PolicySpec:
        return self.policy.spec

    def make_policy(self, spec: PolicySpec) -> GaussianGRUPolicy:
        return GaussianGRUPolicy(recurrent_spec(spec, self.config.rl2_hidden), self.config.init_std).to(self.device)

    # ---- the interface -------------------------------------------------------------------
    def adapt_for_training(self, support: Sequence[Batch], version: str) -> list[PolicyWeights]:
        # Adaptation happens inside each trial: query trials run theta too (fresh on-policy data).
        return [self.policy_weights(version)] * len(support)

    def adapt(self, support: Sequence[Batch], version: str, params: Params | None = None,
              steps: int = 1) -> tuple[Params, list[PolicyWeights]]:
        raise InContextLearnerError(
            "rl2 adapts in context (its GRU state over a trial), not by gradient steps: there is no adapted "
            "policy to build; evaluate it with learner.evaluation.evaluate / `fleet eval` (in-context trials)")

    def adaptation(self, tasks, rounds: int, version: str, episodes: int) -> Plan:
        """`episodes` trials of `rounds` episodes per task, with theta: episode j of each trial measures round j."""
        weights = self.policy_weights(f"{version}/theta")
        yield Collect("eval", tuple(tasks), (weights,) * len(tasks), episodes * rounds, "trials",
                      trial_episodes=rounds, measures=tuple(range(rounds)))

    def learn(self, support: Sequence[Batch], query: Sequence[Batch]) -> dict[str, float]:
        return self.ppo_update(self.prepare([*support, *query]), self.trial_terms)

    # ---- trials --------------------------------------------------------------------------
    def prepare(self, batches: Sequence[Batch]) -> TaskData:
        """learner.data.prepare_trials: [N, trials, n * H, ...] with GAE across each trial."""
        return prepare_trials(batches, self.config, self.device, self.trial_episodes)

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
