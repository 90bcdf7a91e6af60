"""Single-task baseline: one independent network per training task, each trained by PPO on its
own task's episodes only. It measures negative transfer: multi-task per-task return minus
single-task per-task return on the training tasks (learner.multitask_eval.transfer).

All tasks of a batch train in one vmapped PPO step over their stacked parameters [N, ...], yet
the networks stay independent: each task's loss touches only its own network, gradient clipping
is per network, and each network's parameters are separate Adam parameters (a network whose task
is not in the batch has no gradient, so Adam's momentum does not move it).

Held-out tasks get `self.policy`: a freshly initialised network that is never trained, i.e.
meta-evaluation of this learner on held-out tasks is learning from scratch with 0..k PG steps.
The observation normaliser is shared by all networks (observation statistics, not learning).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fleet.tasks import Task
from learner.adaptation import Params, batched, select
from learner.base import MetaLearner
from learner.config import LearnerConfig
from learner.mtppo import check_task_weights
from learner.networks import GaussianMLPPolicy, gaussian_entropy
from policy import PolicySpec, PolicyWeights
from workers.batch import Batch


class SingleTaskPPO(MetaLearner):
    """K independent Gaussian MLPs, one per training task, trained side by side with vmapped PPO."""

    algorithm = "single_task"

    def __init__(self, spec: PolicySpec, config: LearnerConfig, train_tasks: Sequence[Task] = ()):
        if not train_tasks:
            raise ValueError("single_task needs the training tasks (train_tasks): it keeps one network per task")
        check_task_weights(config.task_weights, train_tasks)
        super().__init__(spec, config, train_tasks)
        self.index = {task.task_id: i for i, task in enumerate(self.train_tasks)}
        self.networks = nn.ModuleList(GaussianMLPPolicy(spec, config.init_std) for _ in self.train_tasks)
        self.networks.to(self.device)
        self.optimizer = torch.optim.Adam(self.networks.parameters(), lr=config.outer_lr)

    # ---- which network a task uses ---------------------------------------------------------
    def network_for(self, task: Task) -> GaussianMLPPolicy:
        """The task's own network; a held-out task gets the untrained fresh network (from scratch)."""
        i = self.index.get(task.task_id)
        return self.policy if i is None else self.networks[i]

    def weights_for(self, tasks: Sequence[Task], version: str) -> list[PolicyWeights]:
        """Each training task's own network; held-out tasks: the freshly initialised network."""
        out = []
        for task in tasks:
            i = self.index.get(task.task_id)
            suffix = "scratch" if i is None else f"task{i}"
            out.append(self._with_normalizer(self.network_for(task), f"{version}/{suffix}"))
        return out

    def _with_normalizer(self, net: GaussianMLPPolicy, version: str) -> PolicyWeights:
        # The shared normaliser lives in self.policy's buffers; the parameters are the task network's.
        return self.policy.to_weights(version, dict(net.named_parameters()))

    def adapt_for_training(self, support: Sequence[Batch], version: str) -> list[PolicyWeights]:
        # No adaptation: query episodes are more data for each task's own network.
        return self.weights_for([b.task for b in support], version)

    # ---- training --------------------------------------------------------------------------
    def stacked_params(self, networks: Sequence[GaussianMLPPolicy]) -> Params:
        """Parameters of `networks` stacked [n, ...] (differentiable into each network)."""
        per_net = [dict(net.named_parameters()) for net in networks]
        return {name: torch.stack([p[name] for p in per_net]) for name, _ in self.policy.named_parameters()}

    def adapt(self, support: Sequence[Batch], version: str, params: Params | None = None,
              steps: int = 1) -> tuple[Params, list[PolicyWeights]]:
        """PG steps from each task's own network (held-out: the fresh one) unless `params` are given."""
        if params is None:
            with torch.no_grad():
                params = self.stacked_params([self.network_for(b.task) for b in support])
        return super().adapt(support, version, params=params, steps=steps)

    def learn(self, support: Sequence[Batch], query: Sequence[Batch]) -> dict[str, float]:
        batches = [*support, *query]
        for batch in batches:
            if batch.task.task_id not in self.index:
                raise ValueError(f"single_task trains only its training tasks; got {batch.task.task_id!r}")
        owners = torch.tensor([self.index[b.task.task_id] for b in batches])
        data = self.prepare(batches)
        for idx in self.minibatch_epochs(len(batches)):
            metrics = self._step(owners[idx], select(data, idx))
        return metrics

    def _step(self, owners: torch.Tensor, data: dict) -> dict[str, float]:
        """One vmapped PPO step: every network gets the mean of its own tasks' (weighted) losses."""
        params = self.stacked_params([self.networks[i] for i in owners.tolist()])
        losses, kls = batched(self.ppo_terms)(params, data)
        weights = data["task_weight"] / data["task_weight"].mean()
        share = (owners.unsqueeze(0) == owners.unsqueeze(1)).sum(1).to(losses)  # entries per network
        present = sorted(set(owners.tolist()))
        entropy = torch.stack([gaussian_entropy(self.networks[i].log_std) for i in present])
        loss = (weights * losses / share).sum() - self.config.entropy_coef * entropy.sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norms = [torch.nn.utils.clip_grad_norm_(self.networks[i].parameters(), self.config.max_grad_norm)
                 for i in present]
        self.optimizer.step()
        return {
            "outer_loss": float(losses.detach().mean()),
            "kl": float(kls.detach().mean()),
            "entropy": float(entropy.detach().mean()),
            "grad_norm": float(torch.stack(norms).mean()),
            "policy_std": float(torch.stack([self.networks[i].log_std.detach().exp().mean() for i in present]).mean()),
        }

    # ---- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = super().state_dict()
        state["networks"] = self.networks.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        networks = state.pop("networks")
        super().load_state_dict(state)  # policy (fresh net), optimizer (all networks), normaliser
        self.networks.load_state_dict(networks)
