"""PEARL (Rakelly et al. 2019): off-policy meta-RL by probabilistic context inference.

A context encoder maps a task's transitions (obs, action, reward) to a posterior q(z | c), a product of
per-transition Gaussians; a soft actor-critic conditioned on z (twin Q, target critics, automatic
entropy tuning, or a fixed `sac_alpha` as the reference PEARL) learns from per-task replay buffers. The encoder
learns through the critic's Bellman error plus kl_lambda * KL(q(z | c) || N(0, I)) (plus, with
`reward_decoder` > 0, that weight times a reward-prediction error r(s, a, s', z)). Adapting to a new task is
inference, not a gradient step: act with z from the prior, then with z sampled from the posterior given the
episodes seen so far.

One iteration (`collect`): for each sampled task, `prior_episodes` with z ~ N(0, I) (phase and seed stream
"support"; they replace the task's context buffer), then `posterior_episodes` with z ~ q(z | that context)
(phase and stream "query"; replay only). Evaluation rounds use phase and stream "eval" (round-keyed seeds). `update`:
`gradient_steps` steps, each on `tasks_per_step` tasks x `batch_size` transitions in one forward.
"""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
from collections.abc import Sequence

import numpy as np
import torch

from fleet.tasks import Task
from learner.base import resolve_device
from learner.config import LearnerConfig
from learner.interface import Collect, Learner, Plan
from learner.pearl_buffers import TaskBuffers, batch_transitions, concat_transitions
from learner.pearl_nets import PEARLPolicy, RewardDecoder, TwinQ
from learner.sac import actor_loss, alpha_loss, critic_loss, kl_to_standard_normal, polyak, td_target
from policy import PolicySpec, PolicyWeights
from policy.context import ContextEncoder as NumpyContextEncoder
from workers.batch import Batch


def pearl_spec(spec: PolicySpec, config: LearnerConfig) -> PolicySpec:
    """The PEARL policy spec for an env's spaces: kind "pearl", z concatenated to the observation."""
    return PolicySpec(spec.obs_dim, spec.act_dim, tuple(config.hidden_sizes), "relu", "pearl", "concat",
                      config.latent_dim)


def first_episode(batch: Batch) -> Batch:
    """The batch cut to its first episode (one context episode per evaluation round)."""
    final = None if batch.final_obs is None else batch.final_obs[:1]
    return dataclasses.replace(batch, obs=batch.obs[:1], actions=batch.actions[:1], logp=batch.logp[:1],
                               rewards=batch.rewards[:1], mask=batch.mask[:1], success=batch.success[:1],
                               final_obs=final)


class PEARL(Learner):
    """PEARL behind the learner interface (learner/interface.py).

    >>> learner = PEARL(PolicySpec(obs_dim, act_dim), config.learner, seed=0)
    >>> plan = learner.collect(tasks, iteration)   # prior-z, then posterior-z phases
    """

    algorithm = "pearl"

    def __init__(self, spec: PolicySpec, config: LearnerConfig, train_tasks: Sequence[Task] = (),
                 seed: int | None = None):
        if seed is None:  # the builder seeds torch's global RNG before building a learner: draw from it
            seed = int(torch.randint(0, 2**31 - 1, ()))
        self.config, self.spec = config, pearl_spec(spec, config)
        self.device = resolve_device(config.device)
        s, dev = self.spec, self.device
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the process's global RNG
            torch.manual_seed(seed)
            self.policy = PEARLPolicy(s).to(dev)  # normaliser, actor, encoder: what is published
            self.critic, self.target_critic = TwinQ(s, s.hidden_sizes).to(dev), TwinQ(s, s.hidden_sizes).to(dev)
            self.decoder = RewardDecoder(s, s.hidden_sizes).to(dev) if config.reward_decoder > 0 else None
        self.generator = torch.Generator(dev).manual_seed(seed)  # z and action noise of the gradient steps
        self.target_critic.load_state_dict(self.critic.state_dict())
        fixed_alpha = config.sac_alpha is not None  # fixed: never stepped (the reference PEARL's choice)
        self.log_alpha = torch.tensor(math.log(config.sac_alpha) if fixed_alpha else 0.0, device=dev,
                                      requires_grad=not fixed_alpha)
        self.target_entropy = -float(s.act_dim)
        lr = config.sac_lr
        self.optimizers = {
            "critic": torch.optim.Adam([*self.critic.parameters(), *self.policy.encoder.parameters(),
                                        *(self.decoder.parameters() if self.decoder else ())], lr=lr),
            "actor": torch.optim.Adam(self.actor_parameters(), lr=lr),
            "alpha": torch.optim.Adam([self.log_alpha], lr=lr),
        }
        self.replay = TaskBuffers(s.obs_dim, s.act_dim, config.buffer_size)
        self.context = TaskBuffers(s.obs_dim, s.act_dim, config.buffer_size)
        self.rng = np.random.default_rng(seed)
        self.gradient_steps_done = 0

    # ---- collection --------------------------------------------------------------------------
    def collect(self, tasks: Sequence[Task], iteration: int, episodes: int = 0) -> Plan:
        """Prior-z episodes (they become each task's context), then posterior-z episodes (replay only).
        PEARL sizes its phases with learner.prior_episodes / posterior_episodes; `episodes` is not used."""
        cfg, tasks = self.config, tuple(tasks)
        weights = self.policy_weights(f"pearl-{iteration}")
        prior = tuple(tuple(map(float, self.rng.standard_normal(self.spec.context_dim))) for _ in tasks)
        batches = yield Collect("support", tasks, (weights,) * len(tasks), cfg.prior_episodes, "support", prior)
        for task, batch in zip(tasks, batches):
            data = batch_transitions(batch)
            self.replay[task.task_id].add(data)
            self.context[task.task_id].clear()
            self.context[task.task_id].add(data)
        if cfg.posterior_episodes:
            posterior = tuple(self.sample_posterior(weights, self.context[t.task_id].all(), cfg.context_size)
                              for t in tasks)
            batches = yield Collect("query", tasks, (weights,) * len(tasks), cfg.posterior_episodes, "query",
                                    posterior)
            for task, batch in zip(tasks, batches):
                self.replay[task.task_id].add(batch_transitions(batch))

    def adaptation(self, tasks: Sequence[Task], rounds: int, version: str, episodes: int = 1) -> Plan:
        """Round k: `episodes` deterministic episodes per task acting with one z sampled from the posterior
        given k context episodes of that task (round 0: the prior), the context being the first episode of
        each earlier round. Meta-parameters untouched; z is drawn from a stream of its own, seeded by `version`,
        so evaluating never shifts the training stream."""
        tasks = tuple(tasks)
        weights, rng = self.policy_weights(version), np.random.default_rng(zlib.crc32(version.encode()))
        seen: list[list[dict]] = [[] for _ in tasks]
        for k in range(rounds):
            contexts = tuple(self.sample_posterior(weights, concat_transitions(s) if s else None, rng=rng)
                             for s in seen)
            batches = yield Collect("eval", tasks, (weights,) * len(tasks), episodes, "eval", contexts,
                                    deterministic=True, measures=(k,))
            for history, batch in zip(seen, batches):
                history.append(batch_transitions(first_episode(batch)))

    def sample_posterior(self, weights: PolicyWeights, data: dict | None, limit: int | None = None,
                         rng: np.random.Generator | None = None) -> tuple[float, ...]:
        """z ~ q(z | data) with the numpy encoder (what a robot runs); the prior when there is no data.
        `limit`: at most that many transitions, drawn at random (the context size trained on). `rng`:
        default the learner's training stream."""
        encoder, rng = NumpyContextEncoder(weights), self.rng if rng is None else rng
        if data is None or len(data["rewards"]) == 0:
            mu, var = np.zeros(self.spec.context_dim), np.ones(self.spec.context_dim)
        else:
            if limit is not None and len(data["rewards"]) > limit:
                idx = rng.choice(len(data["rewards"]), limit, replace=False)
                data = {k: v[idx] for k, v in data.items()}
            mu, var = encoder.posterior(data["obs"], data["actions"], data["rewards"], data["next_obs"])
        return tuple(map(float, encoder.sample(mu, var, rng)))

    # ---- learning ----------------------------------------------------------------------------
    def update(self) -> dict[str, float]:
        """`gradient_steps` SAC + encoder steps over tasks with data; scalar metrics of the last step (the loop
        reports each phase's return: support = prior z, query = posterior z)."""
        ready = [t for t in self.context.ready() if self.replay[t].count]
        if not ready:
            raise RuntimeError("pearl.update() before any data: run collect() first")
        self._refresh_normalizer()
        metrics: dict[str, float] = {}
        for _ in range(self.config.gradient_steps):
            task_ids = [ready[i] for i in self.rng.integers(0, len(ready), self.config.tasks_per_step)]
            metrics = self.gradient_step(task_ids)
        self.gradient_steps_done += self.config.gradient_steps
        return {**metrics, "gradient_steps": float(self.gradient_steps_done), "tasks_in_replay": float(len(ready))}

    def gradient_step(self, task_ids: Sequence[str]) -> dict[str, float]:
        """One step: encoder + twin Q (Bellman error + KL [+ reward prediction]), actor, alpha unless fixed,
        Polyak; [T, B] in one forward."""
        cfg, norm = self.config, self.policy.normalize
        ctx = self._tensors(self.context.sample(task_ids, self.rng, cfg.context_size))
        rl = self._tensors(self.replay.sample(task_ids, self.rng, cfg.batch_size))
        mu, var = self.policy.encoder(norm(ctx["obs"]), ctx["actions"], ctx["rewards"], norm(ctx["next_obs"]))  # [T, Z]
        noise = torch.randn(mu.shape, generator=self.generator, device=mu.device)
        z = (mu + var.sqrt() * noise)[:, None].expand(-1, cfg.batch_size, -1)
        obs, next_obs, alpha = norm(rl["obs"]), norm(rl["next_obs"]), self.log_alpha.exp().detach()
        with torch.no_grad():
            next_actions, next_logp = self.policy.act(next_obs, z, self.generator)
            next_q = torch.min(*self.target_critic(next_obs, next_actions, z))
            target = td_target(rl["rewards"], next_q, next_logp, alpha, cfg.gamma, cfg.reward_scale)
        kl = kl_to_standard_normal(mu, var).mean()
        q_loss = critic_loss(*self.critic(obs, rl["actions"], z), target)
        scalars = {}
        if self.decoder is not None:  # the encoder also learns to make the task's rewards predictable
            predicted = self.decoder(obs, rl["actions"], next_obs, z)
            scalars["reward_loss"] = torch.nn.functional.mse_loss(predicted, rl["rewards"])
        self._step("critic", q_loss + cfg.kl_lambda * kl + cfg.reward_decoder * scalars.get("reward_loss", 0.0))
        actions, logp = self.policy.act(obs, z.detach(), self.generator)
        pi_loss = actor_loss(logp, torch.min(*self.critic(obs, actions, z.detach())), alpha)
        self._step("actor", pi_loss)
        if self.log_alpha.requires_grad:
            self._step("alpha", alpha_loss(self.log_alpha, logp, self.target_entropy))
        polyak(self.target_critic, self.critic, cfg.tau)
        scalars |= {"q_loss": q_loss, "actor_loss": pi_loss, "kl": kl, "alpha": alpha, "entropy": -logp.mean(),
                   "z_var": var.mean()}
        return {k: float(v.detach()) for k, v in scalars.items()}

    def _step(self, name: str, loss: torch.Tensor) -> None:
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def _tensors(self, data: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(v, device=self.device) for k, v in data.items()}

    def _refresh_normalizer(self) -> None:
        """Observation mean/std over every replay buffer (the statistics travel with the weights)."""
        obs = np.concatenate([self.replay[t].all()["obs"] for t in self.replay.ready()])
        self.policy.obs_mean.copy_(torch.as_tensor(obs.mean(0), device=self.device))
        self.policy.obs_std.copy_(torch.as_tensor(np.maximum(obs.std(0), 1e-3), device=self.device))

    # ---- weights and state -------------------------------------------------------------------
    def policy_weights(self, version: str) -> PolicyWeights:
        """Actor + encoder + normaliser as numpy arrays (policy.pearl and policy.context run them)."""
        return self.policy.to_weights(version)

    def actor_parameters(self) -> list[torch.nn.Parameter]:
        """The actor's own parameters (not the encoder's: it learns through the critic)."""
        return [p for name, p in self.policy.named_parameters() if not name.startswith("encoder.")]

    def state_dict(self) -> dict:
        """Networks, target critics, optimisers, log-alpha, normaliser, replay and context buffers, RNGs."""
        modules = {"policy": self.policy, "critic": self.critic, "target_critic": self.target_critic,
                   **({"decoder": self.decoder} if self.decoder else {})}
        return {**{k: m.state_dict() for k, m in modules.items()},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "log_alpha": self.log_alpha.detach().clone(), "replay": self.replay.state_dict(),
                "context": self.context.state_dict(), "gradient_steps_done": self.gradient_steps_done,
                "numpy_rng": json.dumps(self.rng.bit_generator.state), "torch_rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        for key in ("policy", "critic", "target_critic", *(("decoder",) if self.decoder else ())):
            getattr(self, key).load_state_dict(state[key])
        for key, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][key])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.replay.load_state_dict(state["replay"])
        self.context.load_state_dict(state["context"])
        self.gradient_steps_done = int(state["gradient_steps_done"])
        self.rng.bit_generator.state = json.loads(state["numpy_rng"])
        self.generator.set_state(state["torch_rng"])
