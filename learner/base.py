"""What the on-policy, gradient-based learners share (MAML, FO-MAML, Reptile, Meta-SGD, RL^2, MT-PPO,
single-task): the policy, optimiser and normaliser; the two-phase collection; gradient adaptation; the
PPO step. Data preparation is plain functions (learner/data.py).

The phases each of them declares (learner/interface.py):

    support = yield Collect("support", tasks, weights_for(tasks), ...)   # theta (own network per task)
    query = yield Collect("query", tasks, adapt_for_training(support), ...)  # phi_i (or theta again)
    ... then `update()` -> learn(support, query) -> observe(support + query)

and, in evaluation, round k+1 adapts (`adapt`) on round k's episodes (RL^2 overrides: one trial).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from fleet.tasks import Task
from learner.adaptation import Params, TaskData, adapt_batched, log_prob, select, unstack
from learner.config import LearnerConfig
from learner.data import prepare_episodes
from learner.interface import Collect, Learner, Plan
from learner.losses import masked_mean, ppo_clip_loss
from learner.networks import GaussianMLPPolicy, RunningNormalizer, gaussian_entropy
from learner.pcgrad import pcgrad_backward
from policy import PolicySpec, PolicyWeights
from workers.batch import Batch


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("learner.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


class MetaLearner(Learner):
    """Holds theta (`make_policy`), adapts it per task, and updates it from support/query batches."""

    algorithm: str = "base"
    trial_episodes: int = 1  # episodes that share a recurrent state (RL^2 trials); 1 = independent episodes
    robot_params: tuple[str, ...] = ()  # privileged robot parameters its requests carry as context (Collect)

    def __init__(self, spec: PolicySpec, config: LearnerConfig, train_tasks: Sequence[Task] = ()):
        self.config = config
        self.train_tasks = tuple(train_tasks)  # what one-hot task ids and per-task heads index
        self.device = resolve_device(config.device)
        self.policy = self.make_policy(spec)
        self.optimizer = torch.optim.Adam(self.parameter_groups(), lr=config.outer_lr)
        self.normalizer = RunningNormalizer(spec.obs_dim)
        self.collected: tuple[list[Batch], list[Batch]] | None = None  # this iteration's support, query

    def make_policy(self, spec: PolicySpec) -> nn.Module:
        """The meta-policy theta on `self.device` (built once: it draws from torch's RNG)."""
        return GaussianMLPPolicy(spec, self.config.init_std).to(self.device)

    def parameter_groups(self) -> list:
        """What Adam optimises."""
        return list(self.policy.parameters())

    # ---- the Learner interface -----------------------------------------------------------
    def collect(self, tasks: Sequence[Task], iteration: int, episodes: int) -> Plan:
        tasks, version = tuple(tasks), f"it{iteration}"
        contexts = tuple(self.context_for(t) for t in tasks)
        support = yield Collect("support", tasks, tuple(self.weights_for(tasks, version)), episodes, "support",
                                contexts, self.trial_episodes, label="pre", robot_params=self.robot_params)
        adapted = self.adapt_for_training(support, version)
        query = yield Collect("query", tasks, tuple(adapted), episodes, "query", contexts, self.trial_episodes,
                              label="post", robot_params=self.robot_params)
        self.collected = (list(support), list(query))

    def update(self) -> dict[str, float]:
        if self.collected is None:
            raise RuntimeError(f"{self.algorithm}: update() before a whole collect() plan was driven")
        (support, query), self.collected = self.collected, None
        metrics = self.learn(support, query)
        self.observe([*support, *query])
        return metrics

    def adaptation(self, tasks: Sequence[Task], rounds: int, version: str, episodes: int) -> Plan:
        """Round 0 with `weights_for`; round k+1 adapts round k's policy on round k's episodes."""
        tasks = tuple(tasks)
        contexts = tuple(self.context_for(t) for t in tasks)
        weights, params = self.weights_for(tasks, f"{version}/theta"), None
        for k in range(rounds):
            batches = yield Collect("eval", tasks, tuple(weights), episodes, "eval", contexts, measures=(k,),
                                    robot_params=self.robot_params)
            if k < rounds - 1:
                params, weights = self.adapt(batches, f"{version}/step{k + 1}", params=params)

    # ---- what each learner defines -------------------------------------------------------
    def adapt_for_training(self, support: Sequence[Batch], version: str) -> list[PolicyWeights]:
        """Per-task policies to collect query episodes with during meta-training: `inner_steps` adaptation
        steps on each task's support batch (a learner without adaptation returns theta for every task)."""
        return self.adapt(support, version, steps=self.config.inner_steps)[1]

    @abc.abstractmethod
    def learn(self, support: Sequence[Batch], query: Sequence[Batch]) -> dict[str, float]:
        """One meta-update of theta from an iteration's support and query batches; scalar metrics."""

    def weights_for(self, tasks: Sequence[Task], version: str) -> list[PolicyWeights]:
        """The policy each task's support episodes are collected with: theta for all, by default
        (a learner with one network per task returns that task's own)."""
        return [self.policy_weights(version)] * len(tasks)

    def context_for(self, task: Task) -> tuple[float, ...]:
        """The task vector a task-conditioned policy sees for `task` (empty: not conditioned)."""
        return ()

    # ---- shared machinery ----------------------------------------------------------------
    def task_minibatches(self, num_tasks: int) -> list[torch.Tensor]:
        """Task indices of each PPO minibatch for one epoch, shuffled with torch's RNG (checkpointed)."""
        order = torch.randperm(num_tasks) if self.config.minibatches > 1 else torch.arange(num_tasks)
        return [chunk for chunk in torch.tensor_split(order, min(self.config.minibatches, num_tasks)) if len(chunk)]

    def minibatch_epochs(self, num_tasks: int) -> Iterator[torch.Tensor]:
        """`ppo_epochs` epochs of task minibatches (each epoch shuffled when it starts)."""
        for _ in range(self.config.ppo_epochs):
            yield from self.task_minibatches(num_tasks)

    def ppo_update(self, data: TaskData, terms) -> dict[str, float]:
        """The PPO loop of learners without an inner step (MT-PPO, RL^2): `terms(minibatch)` -> per-task
        (losses, kls), one `ppo_step` per minibatch of tasks."""
        for idx in self.minibatch_epochs(int(data["mask"].shape[0])):
            minibatch = select(data, idx)
            metrics = self.ppo_step(*terms(minibatch), minibatch["task_weight"])
        return metrics

    def params(self) -> Params:
        return dict(self.policy.named_parameters())

    def policy_weights(self, version: str) -> PolicyWeights:
        return self.policy.to_weights(version)

    def adapt(
        self, support: Sequence[Batch], version: str, params: Params | None = None, steps: int = 1
    ) -> tuple[Params, list[PolicyWeights]]:
        """Adapt theta (or per-task `params` [N, ...]) on each task's support batch, without
        tracking gradients; returns stacked params and one PolicyWeights per task."""
        data = self.prepare(support)
        with torch.no_grad():
            adapted = adapt_batched(self.policy, self.params() if params is None else params, data,
                                    self.inner_rates(), steps=steps, first_order=True,
                                    per_task_params=params is not None)
        adapted = {k: v.detach() for k, v in adapted.items()}
        return adapted, [self.policy.to_weights(f"{version}/task{i}", p) for i, p in enumerate(unstack(adapted))]

    def inner_rates(self) -> float | Params:
        """The inner step size of `adapt` (Meta-SGD: its learned rates)."""
        return self.config.inner_lr

    def prepare(self, batches: Sequence[Batch]) -> TaskData:
        """learner.data.prepare_episodes with this learner's config and device."""
        return prepare_episodes(batches, self.config, self.device)

    def observe(self, batches: Sequence[Batch]) -> None:
        """Fold new observations into the normaliser (applied from the next policy version)."""
        for batch in batches:
            self.normalizer.update(batch.obs[batch.mask > 0])
        with torch.no_grad():
            self.policy.obs_mean.copy_(torch.as_tensor(self.normalizer.mean, dtype=torch.float32))
            self.policy.obs_std.copy_(torch.as_tensor(self.normalizer.std, dtype=torch.float32))

    def ppo_terms(self, params: Params, data: TaskData) -> tuple[torch.Tensor, torch.Tensor]:
        """One task's PPO-clip loss and approximate KL(old || new) under `params`."""
        logp = log_prob(self.policy, params, data["obs"], data["actions"])
        loss = ppo_clip_loss(logp, data["logp_old"], data["adv"], data["mask"], self.config.clip)
        return loss, masked_mean(data["logp_old"] - logp, data["mask"])

    def ppo_step(self, task_losses: torch.Tensor, task_kls: torch.Tensor,
                 task_weights: torch.Tensor | None = None) -> dict[str, float]:
        """Weighted task losses minus the entropy bonus -> one optimiser step.

        Each task loss is already a per-task mean (a task with more valid steps does not count
        more); `task_weights` [N] (data["task_weight"]) are rescaled to mean 1 over the batch, so
        uniform weights give the plain mean. With `pcgrad`, conflicting per-task gradients are
        projected (learner.pcgrad) before the usual clip + Adam step.
        """
        n = task_losses.shape[0]
        if task_weights is None:
            task_weights = torch.ones(n, dtype=task_losses.dtype, device=task_losses.device)
        weighted = task_losses * (task_weights / task_weights.mean())
        entropy = gaussian_entropy(self.policy.log_std)
        if self.config.pcgrad:
            params = [p for p in self.policy.parameters() if p.requires_grad]
            self.optimizer.zero_grad(set_to_none=True)
            pcgrad_backward(params, weighted / n, shared_loss=-self.config.entropy_coef * entropy)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm))
            self.optimizer.step()
        else:
            grad_norm = self.step_optimizer(weighted.mean() - self.config.entropy_coef * entropy)
        return {
            "outer_loss": float(weighted.detach().mean()),
            "kl": float(task_kls.detach().mean()),
            "entropy": float(entropy.detach()),
            "grad_norm": grad_norm,
            "policy_std": float(torch.exp(self.policy.log_std.detach()).mean()),
        }

    def step_optimizer(self, loss: torch.Tensor) -> float:
        """Backward + optional global grad-norm clip + Adam step; returns the grad norm."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        return float(norm)

    def state_dict(self) -> dict:
        return {
            "algorithm": self.algorithm,
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "normalizer": self.normalizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["algorithm"] != self.algorithm:
            raise ValueError(f"checkpoint is for {state['algorithm']!r}, not {self.algorithm!r}")
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.normalizer.load_state_dict(state["normalizer"])
