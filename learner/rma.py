"""Rapid Motor Adaptation ("rma", Kumar, Fu, Pathak, Malik, RSS 2021): a new robot of the fleet is recognised from
its own last steps, inside its first episode, with no gradient step and no reward.

Phase 1 (iterations before `learner.rma.adapt_from`): the base policy pi(obs, z) (z entering by FiLM by default,
`learner.rma.conditioning`) and the extrinsics encoder
z = mu(e) are trained together by PPO, with e the robot's privileged parameters (`learner.robot_params`, the
robot's vector from `fleet.robots.robot_vector`, carried by each request as its context):

    L_PPO(theta, mu) = -E[min(rho A, clip(rho, 1 - eps, 1 + eps) A)],  rho = pi(a | o, mu(e)) / pi_old(a | o, mu(e))

The last `learner.rma.warmup` phase-1 iterations also fit psi on the privileged policy's own steps (a warm start).
Phase 2 (from `adapt_from` on): pi and mu are frozen (the observation normalisation too) and the adaptation
module psi reads the last K = `learner.rma.history` entries [normalised obs, action] and the current obs; it is
regressed onto the encoder's latent on the robot's own on-policy data, collected while acting with psi's own
estimate (as RMA does, so psi learns on the states its errors lead to), and (`learner.rma.finetune`) the base
policy continues PPO on the latents psi estimated, so it acts well on psi's estimates, errors included:

    L_psi = E_t || psi(o_{t-K..t-1}, a_{t-K..t-1}, o_t) - mu(e) ||^2

The published policy (kind "rma", `policy.rma`) runs psi every step on the robot. Yardsticks: the same base
policy told the true e is the oracle (`oracle()`: "the same learner told the robot's parameters"); a fresh
learner is from-scratch; `train.robot_agnostic` adds MT-PPO with no parameters (domain randomisation).
Evaluation: trials of `rounds` episodes with the adaptive policy; its history restarts every episode, so round 0
is "within the first episode".
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from fleet.robots import robot_param_dim
from fleet.tasks import Task
from learner.adaptation import Params, TaskData, batched, log_prob
from learner.base import MetaLearner
from learner.conditioning import conditioned_spec
from learner.config import LearnerConfig
from learner.evaluation import ORACLE
from learner.interface import Collect, Learner, Plan
from learner.losses import masked_mean, ppo_clip_loss
from learner.published import EvaluationOnly
from policy import PolicySpec, PolicyWeights
from policy.spec import OBS_CLIP
from workers.batch import Batch


class ReluMLP(nn.Module):
    """ReLU hidden layers, linear output: mu(e) and psi(history) (numpy twin: `policy.rma.relu_mlp`)."""

    def __init__(self, in_dim: int, sizes: Sequence[int], out_dim: int):
        super().__init__()
        dims = [in_dim, *sizes]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.out = nn.Linear(dims[-1], out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.out(x)


def history_windows(obs: torch.Tensor, actions: torch.Tensor, history: int) -> torch.Tensor:
    """The adaptation module's input at every step of every episode, [E, H, history * (D + A) + D], from
    normalised observations [E, H, D] and actions [E, H, A]: entries [obs_j, clip(a_j, -1, 1)] of steps
    t - history .. t - 1, oldest first, zeros before the episode's first step, then obs_t - exactly what
    `policy.rma.NumpyRMAPolicy` holds in its state at step t."""
    entries = torch.cat([obs, actions.clamp(-1.0, 1.0)], dim=-1)
    padded = torch.nn.functional.pad(entries, (0, 0, history, 0))  # `history` zero steps before step 0
    windows = padded.unfold(1, history, 1)[:, : obs.shape[1]]  # [E, H, D + A, history]: steps t-history .. t-1
    flat = windows.permute(0, 1, 3, 2).reshape(*obs.shape[:2], -1)
    return torch.cat([flat, obs], dim=-1)


class RMALearner(MetaLearner):
    """Phase 1: PPO on pi(obs, mu(e)); phase 2: regression of psi(history) onto mu(e). Publishes `policy.rma`."""

    algorithm = "rma"

    def __init__(self, spec: PolicySpec, config: LearnerConfig, train_tasks: Sequence[Task] = ()):
        self.robot_params = tuple(config.robot_params)
        self.rma = config.rma
        if spec.conditioning == "none":
            spec = conditioned_spec(spec, config.rma.conditioning, config.rma.latent)
        base = spec
        super().__init__(replace(base, kind="mlp"), config, train_tasks)
        dims = (robot_param_dim(self.robot_params), self.policy.spec.obs_dim, self.policy.spec.act_dim)
        self.adapter = ReluMLP(self.rma.history * (dims[1] + dims[2]) + dims[1], self.rma.adapt_sizes,
                               self.rma.latent).to(self.device)
        self.adapter_optimizer = torch.optim.Adam(self.adapter.parameters(), lr=self.rma.adapt_lr)
        self.phase2 = False  # set by collect(): which phase this iteration's data is for
        self.warming = False  # set by collect(): a phase-1 iteration whose data also warms psi up
        self.expert: PolicyWeights | None = None  # the privileged policy at the end of phase 1 (the oracle)
        self.adapter_loss = float("nan")
        self.windows: list[torch.Tensor] = []  # phase 2's regression data so far: psi's inputs, mu(e) targets

    def make_policy(self, spec: PolicySpec) -> nn.Module:
        policy = super().make_policy(spec)
        e_dim = robot_param_dim(self.config.robot_params)
        self.extrinsics = ReluMLP(e_dim, self.config.rma.encoder_sizes, self.config.rma.latent).to(self.device)
        return policy

    def parameter_groups(self) -> list:
        return [*self.policy.parameters(), *self.extrinsics.parameters()]

    def step_optimizer(self, loss: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.parameter_groups(), self.config.max_grad_norm)
        self.optimizer.step()
        return float(norm)

    # ---- training ------------------------------------------------------------------------
    def collect(self, tasks: Sequence[Task], iteration: int, episodes: int) -> Plan:
        """MT-PPO's two phases; every request carries its robot's vector e (phase 1 acts on mu(e); phase 2 acts
        on psi's estimate and keeps e only as the regression target)."""
        self.phase2 = iteration >= self.rma.adapt_from
        if self.phase2 and self.expert is None:  # the oracle: the base policy as phase 1 left it, told the robot
            self.expert = self.rma_weights("oracle", adaptive=False)
        self.warming = not self.phase2 and iteration >= self.rma.adapt_from - self.rma.warmup
        yield from super().collect(tasks, iteration, episodes)

    def weights_for(self, tasks: Sequence[Task], version: str) -> list[PolicyWeights]:
        return [self.rma_weights(version, adaptive=self.phase2)] * len(tasks)

    def adapt_for_training(self, support: Sequence[Batch], version: str) -> list[PolicyWeights]:
        return [self.rma_weights(version, adaptive=self.phase2)] * len(support)

    def ppo_terms(self, params: Params, data: TaskData) -> tuple[torch.Tensor, torch.Tensor]:
        """One task's PPO-clip loss and approximate KL with z = mu(e) (phase 1: gradients reach the encoder), or
        with psi's per-step estimates that acted (phase 2 fine-tuning: data["context"] is already z)."""
        z = data["context"] if self.phase2 else self.extrinsics(data["context"])
        logp = log_prob(self.policy, params, data["obs"], data["actions"], z)
        loss = ppo_clip_loss(logp, data["logp_old"], data["adv"], data["mask"], self.config.clip)
        return loss, masked_mean(data["logp_old"] - logp, data["mask"])

    def learn(self, support: Sequence[Batch], query: Sequence[Batch]) -> dict[str, float]:
        batches = [*support, *query]
        if not self.phase2:
            terms = batched(self.ppo_terms, per_task_params=False)
            metrics = self.ppo_update(self.prepare(batches), lambda minibatch: terms(self.params(), minibatch))
            if self.warming:  # psi starts from the privileged policy's own steps (its normaliser moves little now)
                metrics["adapter_loss"] = self.adapter_loss = self.fit_adapter(batches)
            return metrics
        metrics = self.finetune(batches) if self.rma.finetune else {}
        self.adapter_loss = self.fit_adapter(batches)
        return {**metrics, "adapter_loss": self.adapter_loss}

    def finetune(self, batches: Sequence[Batch]) -> dict[str, float]:
        """PPO on the base policy with the latents psi estimated while acting (mu and psi untouched): the base
        policy learns to act well on psi's estimates, errors included, not only on the encoder's exact latent."""
        data = self.prepare(batches)
        data["context"] = torch.stack([self.estimates(b) for b in batches])  # [N, E, H, latent]
        terms = batched(self.ppo_terms, per_task_params=False)
        return self.ppo_update(data, lambda minibatch: terms(self.params(), minibatch))

    def estimates(self, batch: Batch) -> torch.Tensor:
        """psi's latent at every step of `batch` [E, H, latent], as the workers' numpy twin computed it."""
        with torch.no_grad():
            obs = torch.as_tensor(np.array(batch.obs, np.float32), device=self.device)
            obs = ((obs - self.policy.obs_mean) / self.policy.obs_std).clamp(-OBS_CLIP, OBS_CLIP)
            actions = torch.as_tensor(np.array(batch.actions, np.float32), device=self.device)
            return self.adapter(history_windows(obs, actions, self.rma.history))

    def observe(self, batches: Sequence[Batch]) -> None:
        """The normalisation is frozen from the warm-up on: psi's stored inputs and the base policy must not drift
        under it."""
        if not (self.phase2 or self.warming):
            super().observe(batches)

    def regression_data(self, batches: Sequence[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        """(psi's inputs, mu(e) targets) at every valid step of `batches`."""
        inputs, targets = [], []
        mean, std = self.policy.obs_mean, self.policy.obs_std
        with torch.no_grad():
            for b in batches:
                obs = torch.as_tensor(np.array(b.obs, np.float32), device=self.device)
                obs = ((obs - mean) / std).clamp(-OBS_CLIP, OBS_CLIP)
                actions = torch.as_tensor(np.array(b.actions, np.float32), device=self.device)
                mask = torch.as_tensor(b.mask > 0, device=self.device)
                x = history_windows(obs, actions, self.rma.history)[mask]
                e = torch.as_tensor(np.asarray(b.context, np.float32), device=self.device)
                inputs.append(x)
                targets.append(self.extrinsics(e).expand(len(x), -1))
        return torch.cat(inputs), torch.cat(targets)

    def fit_adapter(self, batches: Sequence[Batch]) -> float:
        """`adapt_steps` Adam steps of || psi(window) - mu(e) ||^2 on random minibatches of the windows of the
        last `adapt_buffer` phase-2 steps (this iteration's included: the data psi's own estimates led to; torch's
        RNG, checkpointed); the last loss, relative to the targets' variance (1 = no better than their mean)."""
        fresh = self.regression_data(batches)
        self.windows = [torch.cat([old, new])[-self.rma.adapt_buffer:] for old, new in zip(self.windows, fresh)] \
            if self.windows else list(fresh)
        x, target = self.windows
        loss = torch.zeros(())
        for _ in range(self.rma.adapt_steps):
            idx = torch.randint(0, len(x), (min(self.rma.adapt_batch, len(x)),), device=self.device)
            loss = torch.nn.functional.mse_loss(self.adapter(x[idx]), target[idx])
            self.adapter_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.adapter_optimizer.step()
        return float(loss.detach()) / max(float(target.var(0).sum() / target.shape[1]), 1e-8)

    # ---- publishing ----------------------------------------------------------------------
    def rma_weights(self, version: str, adaptive: bool = True) -> PolicyWeights:
        """The whole RMA policy (`policy.rma`): actor, mu, psi; `adaptive` picks where z comes from."""
        actor = self.policy.to_weights(version)
        r = self.rma
        spec = replace(actor.spec, kind="rma", model_sizes=tuple(r.adapt_sizes), encoder_sizes=tuple(r.encoder_sizes),
                       privileged_dim=robot_param_dim(self.robot_params), history=r.history)
        arrays = dict(actor.arrays)
        for prefix, module in (("extrinsics", self.extrinsics), ("adaptation", self.adapter)):
            for name, tensor in module.state_dict().items():
                arrays[f"{prefix}.{name}"] = tensor.detach().cpu().numpy().astype(np.float32)
        arrays["rma.mode"] = np.asarray([1.0 if adaptive else 0.0], np.float32)
        return PolicyWeights(spec, arrays, version)

    def policy_weights(self, version: str) -> PolicyWeights:
        """The published policy: adaptive (z from the robot's own history)."""
        return self.rma_weights(version, adaptive=True)

    # ---- evaluation ----------------------------------------------------------------------
    def adaptation(self, tasks: Sequence[Task], rounds: int, version: str, episodes: int) -> Plan:
        """`episodes` trials of `rounds` episodes per task with the adaptive policy (the robot's params hidden);
        episode j of a trial measures round j."""
        weights = self.rma_weights(f"{version}/rma")
        yield Collect("eval", tuple(tasks), (weights,) * len(tasks), episodes * rounds, "trials",
                      trial_episodes=rounds, measures=tuple(range(rounds)))

    def oracle(self) -> Learner:
        """The yardstick: this learner's base policy as phase 1 left it (before fine-tuning on psi's estimates),
        told each robot's true parameters (z = mu(e))."""
        return RobotOracle(self.expert or self.rma_weights("oracle", adaptive=False), self.robot_params)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "extrinsics": self.extrinsics.state_dict(),
                "adapter": self.adapter.state_dict(), "adapter_optimizer": self.adapter_optimizer.state_dict(),
                "adapter_loss": self.adapter_loss, "windows": [w.cpu() for w in self.windows],
                "expert": None if self.expert is None else {k: torch.from_numpy(np.array(v))
                                                            for k, v in self.expert.arrays.items()}}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        self.extrinsics.load_state_dict(state.pop("extrinsics"))
        self.adapter.load_state_dict(state.pop("adapter"))
        self.adapter_optimizer.load_state_dict(state.pop("adapter_optimizer"))
        self.adapter_loss = float(state.pop("adapter_loss"))
        self.windows = [w.to(self.device) for w in state.pop("windows", [])]
        expert = state.pop("expert", None)
        if expert is not None:
            spec = self.rma_weights("oracle", adaptive=False).spec
            self.expert = PolicyWeights(spec, {k: np.asarray(v) for k, v in expert.items()}, "oracle")
        super().load_state_dict(state)


class RobotOracle(EvaluationOnly):
    """A policy evaluated with each robot's true privileged vector (`robot_params`): every round is the same
    policy, so round k measures it again on fresh episodes."""

    algorithm = ORACLE

    def __init__(self, weights: PolicyWeights, robot_params: Sequence[str]):
        super().__init__(weights)
        self.robot_params = tuple(robot_params)

    def adaptation(self, tasks: Sequence[Task], rounds: int, version: str, episodes: int) -> Plan:
        tasks = tuple(tasks)
        for k in range(rounds):
            yield Collect("eval", tasks, (self.weights,) * len(tasks), episodes, "eval", measures=(k,),
                          robot_params=self.robot_params)
