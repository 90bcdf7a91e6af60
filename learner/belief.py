"""Task-inference meta-RL ("belief"): a task-conditioned policy trained with the true task vector, a learned
task model, and a particle filter that infers the task vector of a new task from rewards, step by step.

Meta-training uses what the trainer knows about its training tasks (their parameters): the policy is the
multi-task PPO policy conditioned on the task's standardised params (concat), and a reward model
r(obs, action, next obs, z) is fitted by regression on every transition collected, with z the task's vector.
On a new task the params are hidden: the published policy (kind "belief", `policy.belief`) starts from the
training tasks' range, reweights particles of z by how well the model explains each reward, and acts with z
drawn from that belief every few steps: it explores while unsure and reaches for the task once sure, within one
episode, and keeps its belief across the episodes of a trial. No gradient step and no learner at test time:
numpy on the robot. This is meta-RL as task inference with privileged task information in meta-training
(Humplik et al. 2019, "Meta reinforcement learning as task inference"), with a particle belief in place of
their recurrent one. With `learner.dynamics`, a dynamics model p(s' | s, a, z) (learner/belief_dynamics.py) is
fitted beside the reward model, and the belief weighs each transition's motion too: what z = a robot's gains needs.

Yardsticks: the same policy given the true z is the oracle at the same budget (`oracle()`), and a fresh
learner is the from-scratch baseline. Evaluation: `rounds` episodes per trial; round k = the k-th episode of a
trial (after k episodes of evidence), as RL^2.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from fleet.robots import robot_vector
from fleet.tasks import Task
from learner.belief_dynamics import DynamicsModel, dynamics_data, dynamics_loss, residual_scales
from learner.config import LearnerConfig
from learner.evaluation import ORACLE
from learner.interface import Collect, Learner, Plan
from learner.mtppo import MultiTaskPPO
from learner.published import EvaluationOnly
from policy import PolicySpec, PolicyWeights
from policy.spec import BELIEF_SETTINGS as SETTINGS
from policy.spec import INPUT_CLIP, OBS_CLIP, dynamics_input_dim, model_input_dim
from workers.batch import Batch


class TaskModel(nn.Module):
    """r(obs, action, next obs, z): a ReLU MLP on [normalised obs, action, normalised next obs, z] (the numpy twin
    is `policy.belief.NumpyBeliefPolicy.predict_reward`)."""

    def __init__(self, in_dim: int, sizes: Sequence[int]):
        super().__init__()
        dims = [in_dim, *sizes]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.out = nn.Linear(dims[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.out(x)[..., 0]


class TransitionReplay:
    """A ring buffer of (model input without normalisation, reward) rows: raw obs, action, next obs, z."""

    def __init__(self, capacity: int):
        self.capacity, self.count, self.head = capacity, 0, 0
        self.rows: np.ndarray | None = None
        self.rewards = np.zeros(capacity, np.float32)

    def add(self, rows: np.ndarray, rewards: np.ndarray) -> None:
        if self.rows is None:
            self.rows = np.zeros((self.capacity, rows.shape[1]), np.float32)
        for start in range(0, len(rows), self.capacity):
            chunk, r = rows[start:start + self.capacity], rewards[start:start + self.capacity]
            idx = (self.head + np.arange(len(chunk))) % self.capacity
            self.rows[idx], self.rewards[idx] = chunk, r
            self.head = int((self.head + len(chunk)) % self.capacity)
            self.count = min(self.capacity, self.count + len(chunk))

    def sample(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        idx = rng.integers(0, self.count, size)
        return self.rows[idx], self.rewards[idx]  # type: ignore[index]

    def state_dict(self) -> dict:
        rows = None if self.rows is None else torch.from_numpy(self.rows[:self.count].copy())
        return {"capacity": self.capacity, "count": self.count, "head": self.head, "rows": rows,
                "rewards": torch.from_numpy(self.rewards[:self.count].copy())}  # tensors: weights_only checkpoints

    def load_state_dict(self, state: dict) -> None:
        self.count, self.head = int(state["count"]), int(state["head"])
        if state["rows"] is not None:
            self.rows = np.zeros((self.capacity, state["rows"].shape[1]), np.float32)
            self.rows[:self.count] = np.asarray(state["rows"])
        self.rewards[:self.count] = np.asarray(state["rewards"])


def transitions(batch: Batch, context: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """A batch's valid transitions as rows [obs, action, next obs, z] and their rewards."""
    obs, actions, mask = batch.obs, batch.actions, batch.mask > 0
    final = batch.final_obs if batch.final_obs is not None else obs[:, -1]
    next_obs = np.concatenate([obs[:, 1:], final[:, None]], axis=1)
    z = np.broadcast_to(np.asarray(context, np.float32), (*mask.shape, len(context)))
    rows = np.concatenate([obs, actions, next_obs, z], axis=-1)[mask]
    return rows.astype(np.float32), batch.rewards[mask].astype(np.float32)


class BeliefLearner(MultiTaskPPO):
    """Multi-task PPO on [obs, z] + a reward model (+ with `dynamics`, a dynamics model); publishes the numpy
    task-inference policy. z is the task's standardised params, or with `task_encoding: robot` the robot's
    privileged vector of `robot_params` (then the prior box is the range of the training robots' vectors seen)."""

    algorithm = "belief"

    def __init__(self, spec: PolicySpec, config: LearnerConfig, train_tasks: Sequence[Task] = ()):
        encoding = "robot" if config.task_encoding == "robot" else "params"
        config = config.model_copy(update={"conditioning": "concat", "task_encoding": encoding})
        super().__init__(spec, config, train_tasks)
        base = self.policy.spec
        self.model = TaskModel(model_input_dim(base), config.model_sizes).to(self.device)
        self.model_optimizer = torch.optim.Adam(self.model.parameters(), lr=config.model_lr)
        self.replay = TransitionReplay(config.model_buffer)
        self.rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ())))
        # The task model's own stream (replay minibatches), so a fit running beside collect() draws the same.
        self.model_rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ())))
        self.fitting: threading.Thread | None = None  # the background fit in flight (`model_background`)
        self.fit_outcome: dict = {}  # what it left: "loss" or "error"
        self.model_loss = float("nan")  # the last finished fit's final loss
        self.explored: list[Batch] = []  # this iteration's explore phase (task model only)
        self.model_error = 1.0  # robust scale of the model's residuals on fresh data (the likelihood's scale)
        tasks = () if self.robot_params else self.train_tasks  # robots: the box grows with the robots seen
        vectors = np.asarray([self.context_for(t) for t in tasks], np.float64).reshape(-1, base.context_dim)
        self.low = vectors.min(0) if len(vectors) else -np.ones(base.context_dim)
        self.high = vectors.max(0) if len(vectors) else np.ones(base.context_dim)
        self.box_seen = len(vectors) > 0  # False: the placeholder box [-1, 1] until training data is seen
        # the dynamics model is built last, so the reward model's init and the numpy streams are those without it
        self.dynamics = DynamicsModel(dynamics_input_dim(base), config.dynamics_sizes, base.obs_dim).to(self.device) \
            if config.dynamics else None
        self.dynamics_optimizer = None if self.dynamics is None else \
            torch.optim.Adam(self.dynamics.parameters(), lr=config.model_lr)
        self.dynamics_error = np.ones(base.obs_dim)  # robust residual scale per obs dimension on fresh data
        self.dynamics_loss = self.fit_dynamics_loss = float("nan")  # the last finished fit's / the fit's own

    def true_vector(self, batch: Batch) -> tuple[float, ...]:
        """The z a batch's transitions are fitted with: its robot's privileged vector, or its task's params."""
        if self.robot_params:
            return robot_vector(batch.robot, self.robot_params)
        return self.context_for(batch.task)

    def see_robots(self, batches: Sequence[Batch]) -> None:
        """Robot-vector z: widen the prior box to the vectors of the training robots in `batches`."""
        if not self.robot_params or not batches:
            return
        vectors = np.asarray([robot_vector(b.robot, self.robot_params) for b in batches], np.float64)
        low, high = vectors.min(0), vectors.max(0)
        if self.box_seen:
            low, high = np.minimum(self.low, low), np.maximum(self.high, high)
        self.low, self.high, self.box_seen = low, high, True

    # ---- training ------------------------------------------------------------------------
    def weights_for(self, tasks: Sequence[Task], version: str) -> list[PolicyWeights]:
        """Training episodes act with the true task vector: the concat actor, not the belief policy."""
        return [self.actor_weights(version)] * len(tasks)

    def adapt_for_training(self, support: Sequence[Batch], version: str) -> list[PolicyWeights]:
        return [self.actor_weights(version)] * len(support)

    def collect(self, tasks: Sequence[Task], iteration: int, episodes: int) -> Plan:
        """MT-PPO's phases (the true task vector), then `model_episodes` per task acting with a task vector drawn
        from the prior box (stream "explore"): the transitions an inferring policy meets while it is
        still wrong about the task, for the task model only (PPO never sees them)."""
        yield from super().collect(tasks, iteration, episodes)
        if self.collected is not None:
            self.see_robots([*self.collected[0], *self.collected[1]])
        if self.config.model_episodes:
            tasks = tuple(tasks)
            guesses = tuple(tuple(map(float, self.rng.uniform(self.low, self.high))) for _ in tasks)
            self.explored = yield Collect("train", tasks, (self.actor_weights(f"it{iteration}"),) * len(tasks),
                                          self.config.model_episodes, "explore", guesses, label="explore")

    def learn(self, support: Sequence[Batch], query: Sequence[Batch]) -> dict[str, float]:
        """MT-PPO's update of the actor, then the task model's regression on the replay (with `model_background`,
        started here and left running while the workers collect the next iteration: the next collection acts
        with the actor only; everything that reads the model waits for it first, see `settle_model`).
        `model_loss` is the last finished fit's (with `model_background`, the previous iteration's)."""
        self.settle_model()
        metrics = super().learn(support, query)
        explored, self.explored = list(self.explored), []
        # every row carries its task's TRUE vector (explore episodes acted with a guess; the reward is the task's)
        fresh = [transitions(b, self.true_vector(b)) for b in [*support, *query, *explored]]
        rows, rewards = np.concatenate([f[0] for f in fresh]), np.concatenate([f[1] for f in fresh])
        probe = fresh[len(fresh) - len(explored):] if explored else fresh  # the explore episodes', when there are
        probe_rows = np.concatenate([p[0] for p in probe])
        self.model_error = self._residual_scale(probe_rows, np.concatenate([p[1] for p in probe]))  # before fitting
        if self.dynamics is not None:
            self.dynamics_error = self._dynamics_scales(probe_rows)
        self.replay.add(rows, rewards)
        if self.config.model_background:
            # update() folds this iteration's observations into the normaliser right after learn(): the fit keeps
            # the normalisation of now, as an inline fit sees it
            norm = (self.policy.obs_mean.clone(), self.policy.obs_std.clone())
            self.fitting = threading.Thread(target=self._fit_in_background, args=(self.config.model_steps, norm),
                                            name="belief-task-model", daemon=True)
            self.fitting.start()
        else:
            self.model_loss = self.fit_model(self.config.model_steps)
            self.dynamics_loss = self.fit_dynamics_loss
        loss = {"model_loss": self.model_loss} if np.isfinite(self.model_loss) else {}  # none finished yet
        return {**metrics, **loss, "model_error": self.model_error, **self._dynamics_metrics()}

    def _dynamics_metrics(self) -> dict[str, float]:
        if self.dynamics is None:
            return {}
        loss = {"dynamics_loss": self.dynamics_loss} if np.isfinite(self.dynamics_loss) else {}
        return {**loss, "dynamics_error": float(np.mean(self.dynamics_error))}

    def _fit_in_background(self, steps: int, norm: tuple[torch.Tensor, torch.Tensor]) -> None:
        try:
            self.fit_outcome = {"loss": self.fit_model(steps, norm)}
        except BaseException as exc:  # re-raised where the model is next needed (settle_model)
            self.fit_outcome = {"error": exc}

    def settle_model(self) -> None:
        """Wait for a background fit of the task model, if one runs; re-raise what it raised."""
        if self.fitting is None:
            return
        self.fitting.join()
        self.fitting, outcome, self.fit_outcome = None, self.fit_outcome, {}
        if "error" in outcome:
            raise RuntimeError(f"belief: the task model's background fit failed: {outcome['error']!r}") \
                from outcome["error"]
        self.model_loss = float(outcome["loss"])
        self.dynamics_loss = self.fit_dynamics_loss  # written by the fit's thread, read here once it has ended

    def fit_model(self, steps: int, norm: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
        """`steps` Adam steps of squared reward error on replay minibatches (observations normalised by `norm`,
        default the policy's current mean and std); the last loss. With `dynamics`, each step also fits the
        dynamics model on the same minibatch (`learner.belief_dynamics`; its last loss: `fit_dynamics_loss`)."""
        loss, dyn = torch.zeros(()), torch.full((), float("nan"))
        for _ in range(steps):
            rows, rewards = self.replay.sample(self.model_rng, self.config.model_batch)
            x, r = self._model_input(rows, norm), torch.as_tensor(rewards, device=self.device)
            loss = torch.nn.functional.mse_loss(self.model(x), r)
            self.model_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.model_optimizer.step()
            if self.dynamics is not None:
                dyn = dynamics_loss(self.dynamics, *self._dynamics_data(rows, norm))
                self.dynamics_optimizer.zero_grad(set_to_none=True)  # type: ignore[union-attr]
                dyn.backward()
                self.dynamics_optimizer.step()  # type: ignore[union-attr]
        self.fit_dynamics_loss = float(dyn.detach())
        return float(loss.detach())

    def _dynamics_data(self, rows: np.ndarray, norm: tuple[torch.Tensor, torch.Tensor] | None = None):
        mean, std = norm if norm is not None else (self.policy.obs_mean, self.policy.obs_std)
        spec = self.policy.spec
        return dynamics_data(torch.as_tensor(rows, device=self.device), spec.obs_dim, spec.act_dim, mean, std)

    def _dynamics_scales(self, rows: np.ndarray) -> np.ndarray:
        """The dynamics model's robust residual scale per obs dimension on rows it has not been fitted on."""
        with torch.no_grad():
            x, target = self._dynamics_data(rows)
            predicted = self.dynamics(x).cpu().numpy() if self.replay.count else None  # type: ignore[misc]
        return residual_scales(predicted, target.cpu().numpy())

    def _model_input(self, rows: np.ndarray, norm: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Raw rows [obs, action, next obs, z] -> the model's input, normalised as the numpy twin does."""
        d, a = self.policy.spec.obs_dim, self.policy.spec.act_dim
        x = torch.as_tensor(rows, device=self.device)
        mean, std = norm if norm is not None else (self.policy.obs_mean, self.policy.obs_std)
        obs = ((x[:, :d] - mean) / std).clamp(-OBS_CLIP, OBS_CLIP)
        act = x[:, d:d + a].clamp(-INPUT_CLIP, INPUT_CLIP)
        nxt = ((x[:, d + a:2 * d + a] - mean) / std).clamp(-OBS_CLIP, OBS_CLIP)
        return torch.cat([obs, act, nxt, x[:, 2 * d + a:]], dim=1)

    def _residual_scale(self, rows: np.ndarray, rewards: np.ndarray) -> float:
        """1.4826 x the median absolute residual of the model on rows it has not been fitted on (floored)."""
        if self.replay.count == 0:
            return max(float(np.std(rewards)), 1e-3)
        with torch.no_grad():
            predicted = self.model(self._model_input(rows)).cpu().numpy()
        return max(1.4826 * float(np.median(np.abs(predicted - rewards))), 1e-3)

    # ---- publishing ----------------------------------------------------------------------
    def actor_weights(self, version: str) -> PolicyWeights:
        """The task-conditioned actor (what training and the oracle act with)."""
        return self.policy.to_weights(version)

    def policy_weights(self, version: str) -> PolicyWeights:
        """The published policy: actor + task model + prior box + inference settings (policy.belief)."""
        self.settle_model()
        actor = self.actor_weights(version)
        spec = replace(actor.spec, kind="belief", model_sizes=tuple(self.config.model_sizes))
        arrays = dict(actor.arrays)
        for name, tensor in self.model.state_dict().items():
            arrays[f"model.{name}"] = tensor.detach().cpu().numpy().astype(np.float32)
        if self.dynamics is not None:
            spec = replace(spec, dynamics_sizes=tuple(self.config.dynamics_sizes))
            arrays.update(self._dynamics_arrays())
        arrays["belief.low"], arrays["belief.high"] = self.low.astype(np.float32), self.high.astype(np.float32)
        c = self.config
        settings = {"particles": c.belief_particles, "resample_every": c.belief_resample_every,
                    "likelihood_scale": c.belief_likelihood * self.model_error, "jitter": c.belief_jitter}
        arrays["belief.settings"] = np.asarray([settings[k] for k in SETTINGS], np.float32)
        return PolicyWeights(spec, arrays, version)

    def _dynamics_arrays(self) -> dict[str, np.ndarray]:
        """`dynamics.*` weights, the likelihood scale per obs dimension (the measured residual scale x the belief's
        likelihood factor, as the reward's) and the log-likelihood weight (policy.belief.DynamicsTwin)."""
        arrays = {f"dynamics.{name}": t.detach().cpu().numpy().astype(np.float32)
                  for name, t in self.dynamics.state_dict().items()}  # type: ignore[union-attr]
        c = self.config
        weight = c.dynamics_weight if c.dynamics_weight is not None else 1.0 / self.policy.spec.obs_dim
        arrays["dynamics.scale"] = (c.belief_likelihood * self.dynamics_error).astype(np.float32)
        arrays["dynamics.weight"] = np.asarray([weight], np.float32)
        return arrays

    # ---- evaluation ----------------------------------------------------------------------
    def adaptation(self, tasks: Sequence[Task], rounds: int, version: str, episodes: int) -> Plan:
        """`episodes` trials of `rounds` episodes per task with the belief policy (params hidden): episode j of a
        trial measures round j (j episodes of evidence before it; the belief also updates within an episode)."""
        weights = self.policy_weights(f"{version}/belief")
        yield Collect("eval", tuple(tasks), (weights,) * len(tasks), episodes * rounds, "trials",
                      trial_episodes=rounds, measures=tuple(range(rounds)))

    def oracle(self) -> Learner:
        """The yardstick: this learner's actor given each task's true vector (same env-step budget)."""
        return OracleLearner(self.actor_weights("oracle"), self.context_for, self.robot_params)

    def state_dict(self) -> dict:
        self.settle_model()
        return {**super().state_dict(), "model": self.model.state_dict(),
                "model_optimizer": self.model_optimizer.state_dict(), "replay": self.replay.state_dict(),
                "model_error": self.model_error, "model_loss": self.model_loss,
                "numpy_rng": json.dumps(self.rng.bit_generator.state),
                "model_rng": json.dumps(self.model_rng.bit_generator.state),
                "prior_box": (self.low.tolist(), self.high.tolist(), self.box_seen), **self._dynamics_state()}

    def _dynamics_state(self) -> dict:
        if self.dynamics is None:
            return {}
        return {"dynamics": self.dynamics.state_dict(), "dynamics_loss": self.dynamics_loss,
                "dynamics_optimizer": self.dynamics_optimizer.state_dict(),  # type: ignore[union-attr]
                "dynamics_error": self.dynamics_error.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.settle_model()
        state = dict(state)
        self.model_loss = float(state.pop("model_loss", float("nan")))
        if "model_rng" in state:  # checkpoints before the task model had its own stream: keep this one's
            self.model_rng.bit_generator.state = json.loads(state.pop("model_rng"))
        self.model.load_state_dict(state.pop("model"))
        self.model_optimizer.load_state_dict(state.pop("model_optimizer"))
        self.replay.load_state_dict(state.pop("replay"))
        self.model_error = float(state.pop("model_error"))
        self.rng.bit_generator.state = json.loads(state.pop("numpy_rng"))
        if "prior_box" in state:  # checkpoints before robot vectors: the box came from the training tasks
            low, high, seen = state.pop("prior_box")
            self.low, self.high, self.box_seen = np.asarray(low, np.float64), np.asarray(high, np.float64), bool(seen)
        self._load_dynamics(state)
        super().load_state_dict(state)

    def _load_dynamics(self, state: dict) -> None:
        """Pop the dynamics model's entries from `state` into this learner (a learner without one refuses them)."""
        if "dynamics" not in state:
            if self.dynamics is not None:
                raise ValueError("belief: this checkpoint has no dynamics model, but learner.dynamics is on")
            return
        if self.dynamics is None:
            raise ValueError("belief: this checkpoint has a dynamics model, but learner.dynamics is off")
        self.dynamics.load_state_dict(state.pop("dynamics"))
        self.dynamics_optimizer.load_state_dict(state.pop("dynamics_optimizer"))  # type: ignore[union-attr]
        self.dynamics_error = np.asarray(state.pop("dynamics_error"), np.float64)
        self.dynamics_loss = float(state.pop("dynamics_loss"))


class OracleLearner(EvaluationOnly):
    """A task-conditioned policy evaluated with each task's true vector: every round is the same policy, so
    round k measures it again on fresh episodes."""

    algorithm = ORACLE

    def __init__(self, weights: PolicyWeights, encode, robot_params: tuple[str, ...] = ()):
        super().__init__(weights)
        self.encode = encode
        self.robot_params = tuple(robot_params)  # given: each task is told its robot's vector instead

    def adaptation(self, tasks: Sequence[Task], rounds: int, version: str, episodes: int) -> Plan:
        tasks = tuple(tasks)
        contexts = () if self.robot_params else tuple(self.encode(t) for t in tasks)
        for k in range(rounds):
            yield Collect("eval", tasks, (self.weights,) * len(tasks), episodes, "eval", contexts, measures=(k,),
                          robot_params=self.robot_params)
