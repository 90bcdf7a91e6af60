"""Typed, strict run configuration: YAML file + `--set a.b=value` overrides -> `Config`.

Unknown keys and wrong types are errors that name the key and what is expected; they are
raised before anything (Ray, MLflow, envs) starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config that cannot run; the message says which key and what is expected."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FleetConfig(_Strict):
    """The simulated fleet and its task distribution (format and examples: docs/fleet.md)."""

    family: str | dict[str, float] = Field(
        "reach", description="task family (see `fleet tasks`), a plugin 'module:object', or a mapping "
        "family -> weight (a weighted mixture of families sharing spaces)")
    robot: str = Field("kuka_iiwa", description="robot model of a one-robot fleet (see `fleet tasks`)")
    robot_id: str = Field("kuka-0", description="fleet instance id of a one-robot fleet, stamped on the data")
    robots: list[Any] | None = Field(None, description="fleet spec: a list of robot entries (docs/fleet.md); "
                                     "replaces robot/robot_id")
    fleet_file: str | None = Field(None, description="fleet spec YAML file (relative to the working directory); "
                                   "replaces robot/robot_id")
    fleet_seed: int | None = Field(None, ge=0, description="seed of the sampled robot variation (default: the "
                                   "fleet file's seed, else 0)")
    curriculum: str | None = Field(None, description="'module:object' callable (iteration, train tasks, stats) -> "
                                   "sampling weights over train tasks; default uniform")
    eval_robots: list[str] | None = Field(None, description="held-out robot ids (split: test) the held-out "
                                          "evaluation runs on, in turn; default every test robot (or, with none "
                                          "held out, every robot)")
    num_train_tasks: int = Field(200, ge=1, description="size of the seeded meta-training task set")
    num_test_tasks: int = Field(40, ge=1, description="size of the disjoint held-out task set")
    task_seed: int = Field(0, description="seed of the train/test task split")
    horizon: int = Field(50, ge=1, le=10_000, description="steps per episode")

    @field_validator("family")
    @classmethod
    def _known_family(cls, family: str | dict[str, float]) -> str | dict[str, float]:
        from fleet.tasks import family_weights

        family_weights(family)  # raises with the list of known families, or what a plugin lacks
        return family

    @field_validator("robot")
    @classmethod
    def _known_robot(cls, name: str) -> str:
        from fleet.robots import get_robot_model

        get_robot_model(name)
        return name

    @model_validator(mode="after")
    def _fleet_runs(self) -> FleetConfig:
        given = [key for key in ("robots", "fleet_file") if getattr(self, key) is not None]
        if len(given) > 1:
            raise ValueError("give the fleet as fleet.robots or fleet.fleet_file, not both")
        # A saved config (resume) dumps the defaults too: only a changed shorthand conflicts.
        shorthand = [k for k in ("robot", "robot_id") if getattr(self, k) != type(self).model_fields[k].default]
        if given and shorthand:
            raise ValueError(f"fleet.{given[0]} replaces {' and '.join('fleet.' + k for k in shorthand)}; "
                             "remove one of them")
        if self.curriculum is not None:
            from fleet.curriculum import load_curriculum

            load_curriculum(self.curriculum)
        from fleet.fleetspec import check_fleet_families
        from fleet.tasks import family_weights

        fleet = self.build_fleet()
        check_fleet_families(list(family_weights(self.family)), fleet, self.horizon)
        if self.eval_robots is not None:
            known = [r.robot_id for r in fleet.test]
            unknown = [rid for rid in self.eval_robots if rid not in known]
            if unknown or not self.eval_robots:
                raise ValueError(f"fleet.eval_robots names {unknown or 'no robot'}: the held-out robots (split: test) "
                                 f"of this fleet are {known or 'none'}")
        return self

    def build_fleet(self):
        """The run's robots (:class:`fleet.fleetspec.Fleet`), the same for the same config."""
        from fleet.fleetspec import load_fleet_file, parse_fleet, single_robot_fleet

        if self.robots is not None:
            return parse_fleet(self.robots, self.fleet_seed or 0, source="fleet.robots")
        if self.fleet_file is not None:
            return load_fleet_file(self.fleet_file, self.fleet_seed)
        return single_robot_fleet(self.robot, self.robot_id)


class WorkersConfig(_Strict):
    backend: Literal["ray", "local"] = Field("ray", description="ray actors or in-process workers")
    num_workers: int = Field(2, ge=1, le=1024, description="rollout workers (1 CPU each under Ray)")


ALGORITHMS = ("maml", "reptile", "metasgd", "rl2", "pearl", "belief", "rma", "mtppo", "single_task")
MULTI_TASK = ("mtppo", "single_task")


class RMAConfig(_Strict):
    """Rapid Motor Adaptation (learner/rma.py): phase 1 trains the base policy on [obs, mu(e)] with e the robot's
    privileged parameters (`learner.robot_params`); from iteration `adapt_from` on, phase 2 trains the adaptation
    module psi(last `history` (obs, action) steps, obs) to regress mu(e), acting with its own estimate."""

    latent: int = Field(8, ge=1, le=64, description="size of the extrinsics latent z")
    conditioning: Literal["film", "concat", "additive"] = Field(
        "film", description="how z enters the base policy: film (per-layer scale and shift: a motor's polarity or "
        "gain acts multiplicatively on the action, which concat learns several times slower) or concat (RMA's own)")
    history: int = Field(10, ge=1, le=200, description="(obs, action) steps the adaptation module reads")
    adapt_from: int = Field(1, ge=1, description="first iteration of phase 2 (adaptation module); earlier "
                            "iterations train the base policy and the extrinsics encoder")
    adapt_steps: int = Field(300, ge=1, description="adaptation-module regression steps per phase-2 iteration")
    finetune: bool = Field(True, description="phase 2 also trains the base policy by PPO on the latents psi "
                           "estimated while acting (a small error in z can cost a FiLM policy much)")
    warmup: int = Field(5, ge=0, description="last phase-1 iterations whose data (the privileged policy's steps) "
                        "also fits the adaptation module: phase 2 starts from a module that already reads robots")
    adapt_batch: int = Field(1024, ge=1, description="history windows per regression step")
    adapt_lr: float = Field(1e-3, gt=0, description="Adam step size of the adaptation module")
    adapt_buffer: int = Field(100_000, ge=1, description="phase-2 steps whose windows the regression draws from "
                              "(the newest; DAgger-style aggregation of psi's own on-policy data)")
    adapt_sizes: tuple[int, ...] = Field((256, 128), min_length=1, description="adaptation module hidden sizes "
                                         "(ReLU MLP over the flattened history)")
    encoder_sizes: tuple[int, ...] = Field((64,), min_length=1, description="extrinsics encoder hidden sizes")


class LearnerConfig(_Strict):
    algorithm: Literal["maml", "reptile", "metasgd", "rl2", "pearl", "belief", "rma", "mtppo", "single_task"] = Field(
        "maml", description="maml | reptile | metasgd | rl2 | pearl | belief | rma (meta-learners); mtppo | "
        "single_task (multi-task baselines: one shared policy / one independent network per training task)")
    first_order: bool = Field(False, description="MAML/Meta-SGD: drop second-order terms (FO-MAML)")
    inner_lr: float = Field(0.1, gt=0, description="adaptation step size alpha")
    inner_steps: int = Field(1, ge=1, le=10, description="inner gradient steps during meta-training")
    inner_rates: Literal["fixed", "per_step"] = Field(
        "fixed", description="maml: inner step sizes: fixed (inner_lr at every step) or per_step (one learned rate "
        "per inner step, initialised at inner_lr, published with the weights and used at that adaptation step)")
    outer_lr: float = Field(1e-3, gt=0, description="Adam step size of the meta-update")
    ppo_epochs: int = Field(5, ge=1, description="optimisation epochs per meta-batch (outer PPO)")
    clip: float = Field(0.2, gt=0, lt=1, description="PPO clip range epsilon")
    gamma: float = Field(0.99, gt=0, le=1, description="discount")
    gae_lambda: float = Field(1.0, ge=0, le=1, description="GAE lambda")
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus in the outer loss")
    max_grad_norm: float = Field(1.0, gt=0, description="global gradient-norm clip of the meta-update")
    hidden_sizes: tuple[int, ...] = Field((64, 64), min_length=1, description="policy MLP hidden sizes")
    init_std: float = Field(1.0, gt=0, description="initial action standard deviation")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when present")
    placement: Literal["auto", "driver", "actor"] = Field(
        "auto", description="where the learner runs under Ray: auto = a GPU actor when the cluster has GPUs, "
        "else in the driver process; actor = always a Ray actor")
    minibatches: int = Field(1, ge=1, description="PPO minibatches of tasks per epoch (shuffled with the "
                             "learner's torch RNG)")
    # ---- multi-task learning
    conditioning: Literal["none", "concat", "additive", "multihead", "film"] = Field(
        "none", description="mtppo: how the task enters the policy: none (task-agnostic), concat (appended to the "
        "observation), additive (a learned embedding added to the first hidden layer), multihead (one output "
        "head per training task), film (multiplicative: per-layer scale and shift from the task)")
    task_encoding: Literal["onehot", "params", "robot"] = Field(
        "onehot", description="the task vector: onehot (training-task id; a held-out task gets the uniform "
        "vector), params (the task's numeric parameters, flattened) or robot (the robot's privileged parameters "
        "`robot_params`: the robot-oracle yardstick)")
    robot_params: tuple[str, ...] = Field(
        (), description="privileged robot parameters the learner is told in training (rma, task_encoding robot): "
        "names from fleet.robots.ROBOT_PARAMS, e.g. [joint_gains]")
    rma: RMAConfig = Field(default_factory=RMAConfig, description="rma: its own settings")
    normalization: Literal["per_task", "global"] = Field(
        "per_task", description="advantage normalisation per task (tasks on one scale) or over the whole batch")
    task_weights: dict[str, float] = Field(
        default_factory=dict, description="loss weight per family name or task id (default 1.0)")
    pcgrad: bool = Field(False, description="mtppo: project conflicting per-task gradients (PCGrad)")
    # ---- meta-learning
    reptile_step: float = Field(1.0, gt=0, le=1, description="Reptile: theta += step * mean(phi - theta) fed "
                                "to Adam as a pseudo-gradient scale")
    rl2_hidden: int = Field(64, ge=1, description="RL^2: GRU hidden size")
    trial_episodes: int = Field(2, ge=1, description="RL^2: episodes per trial sharing one hidden state")
    # ---- PEARL (off-policy: SAC on [obs, z], z inferred from context; hidden_sizes sizes every network)
    latent_dim: int = Field(5, ge=1, description="PEARL: size of the task latent z")
    sac_lr: float = Field(3e-4, gt=0, description="PEARL: Adam step size of actor, critics, encoder and alpha")
    tau: float = Field(0.005, gt=0, le=1, description="PEARL: Polyak rate of the target critics")
    reward_scale: float = Field(5.0, gt=0, description="PEARL: reward multiplier in the TD target")
    kl_lambda: float = Field(0.1, ge=0, description="PEARL: weight of KL(q(z|c) || N(0, I)) in the encoder loss")
    batch_size: int = Field(256, ge=1, description="PEARL: replay transitions per task per gradient step")
    context_size: int = Field(100, ge=1, description="PEARL: context transitions per task the encoder reads")
    tasks_per_step: int = Field(8, ge=1, description="PEARL: tasks per gradient step (one batched forward)")
    gradient_steps: int = Field(200, ge=1, description="PEARL: SAC + encoder gradient steps per update()")
    prior_episodes: int = Field(1, ge=1, description="PEARL: episodes per task with z from the prior, per "
                                "iteration (they become the task's context)")
    posterior_episodes: int = Field(1, ge=0, description="PEARL: episodes per task with z from the posterior "
                                    "(replay only), per iteration")
    buffer_size: int = Field(5000, ge=1, description="PEARL: replay capacity per task (transitions)")
    sac_alpha: float | None = Field(None, gt=0, description="PEARL: fixed entropy coefficient (as the reference "
                                    "PEARL: reward_scale sets the trade-off); null = automatic entropy tuning")
    reward_decoder: float = Field(0.0, ge=0, description="PEARL: weight of an auxiliary reward-prediction loss "
                                  "r(s, a, s', z) on the encoder (0 = none: the encoder learns from the critic)")
    # ---- belief (task inference: params-conditioned PPO policy + reward model + particle filter)
    model_sizes: tuple[int, ...] = Field((128, 128), min_length=1, description="belief: task (reward) model "
                                         "hidden sizes (ReLU)")
    model_lr: float = Field(1e-3, gt=0, description="belief: Adam step size of the task model")
    model_steps: int = Field(400, ge=1, description="belief: task-model regression steps per update()")
    model_episodes: int = Field(2, ge=0, description="belief: episodes per task and iteration acting with a task "
                                "vector drawn from the prior (data for the task model only)")
    model_batch: int = Field(512, ge=1, description="belief: transitions per task-model step")
    model_buffer: int = Field(200_000, ge=1, description="belief: transitions the task model's replay keeps")
    model_background: bool = Field(True, description="belief: fit the task model in a background thread while the "
                                   "workers collect the next iteration (only the published policy needs it, never "
                                   "the next collection); false fits it inside update(). Same result either way")
    belief_particles: int = Field(256, ge=2, description="belief: particles of the task belief")
    belief_resample_every: int = Field(2, ge=1, description="belief: steps between draws of the z acted with "
                                       "(posterior sampling)")
    belief_likelihood: float = Field(10.0, gt=0, description="belief: likelihood scale, in units of the model's "
                                     "measured reward error (about 1 makes a particle belief overconfident: the "
                                     "model's errors are correlated along a trajectory)")
    belief_jitter: float = Field(0.2, ge=0, description="belief: particle jitter on resampling, a fraction of "
                                 "the belief's spread")
    dynamics: bool = Field(False, description="belief: also learn a dynamics model p(next obs | obs, action, z) and "
                           "infer z from every observation change too, not from rewards only (what a robot's joint "
                           "gains need: they show in its motion, hardly in its reward)")
    dynamics_sizes: tuple[int, ...] = Field((128, 128), min_length=1, description="belief: dynamics model hidden "
                                            "sizes (ReLU)")
    dynamics_weight: float | None = Field(None, ge=0, description="belief: weight of the dynamics log-likelihood "
                                          "(summed over obs dimensions) next to the reward's; null = 1 / obs_dim "
                                          "(one transition, one piece of evidence: its dimensions share one "
                                          "model's errors)")

    @field_validator("robot_params")
    @classmethod
    def _known_robot_params(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        from fleet.robots import check_robot_params

        if keys:
            check_robot_params(keys)
        return keys

    @model_validator(mode="after")
    def _consistent(self) -> LearnerConfig:
        needs_robot = self.algorithm == "rma" or self.task_encoding == "robot"
        if needs_robot and not self.robot_params:
            who = "rma" if self.algorithm == "rma" else "task_encoding robot"
            raise ValueError(f"learner.robot_params is empty, but {who} is told the robot's privileged parameters in "
                             "training: name them, e.g. [joint_gains]")
        if self.task_encoding == "robot" and self.algorithm == "mtppo" and self.conditioning == "none":
            raise ValueError("task_encoding 'robot' needs a conditioning (e.g. concat): a task-agnostic policy reads "
                             "no robot vector")
        if self.conditioning != "none" and self.algorithm != "mtppo":
            raise ValueError(f"conditioning {self.conditioning!r} applies to algorithm 'mtppo' only "
                             f"(got algorithm {self.algorithm!r}); meta-learners infer the task from reward")
        if self.dynamics and self.algorithm != "belief":
            raise ValueError(f"dynamics (a learned dynamics model for task inference) applies to algorithm 'belief' "
                             f"only, got {self.algorithm!r}")
        if self.pcgrad and self.algorithm != "mtppo":
            raise ValueError(f"pcgrad applies to algorithm 'mtppo' only, got {self.algorithm!r}")
        if self.inner_rates == "per_step" and self.algorithm != "maml":
            raise ValueError(f"inner_rates 'per_step' applies to algorithm 'maml' only (Meta-SGD learns per-parameter "
                             f"rates shared by its steps), got {self.algorithm!r}")
        if self.algorithm == "pearl" and self.context_size > self.buffer_size:
            raise ValueError(f"pearl: context_size ({self.context_size}) cannot exceed buffer_size "
                             f"({self.buffer_size}), the transitions a task keeps")
        if self.algorithm == "rl2" and self.trial_episodes < 2:
            raise ValueError("rl2 needs trial_episodes >= 2: the hidden state must carry across episodes")
        for key, weight in self.task_weights.items():
            if not weight > 0:
                raise ValueError(f"task_weights[{key!r}] must be > 0, got {weight!r}")
        return self


class TrainConfig(_Strict):
    iterations: int = Field(100, ge=1, description="meta-iterations")
    meta_batch_size: int = Field(20, ge=1, description="tasks per meta-iteration")
    episodes_per_task: int = Field(10, ge=1, description="support (and query) episodes per task")
    seed: int = Field(0, description="seed of task sampling, network init and rollouts")
    eval_every: int = Field(10, ge=0, description="meta-evaluate every K iterations (0 = only at the end)")
    eval_tasks: int = Field(10, ge=1, description="held-out tasks per meta-evaluation")
    eval_episodes: int = Field(10, ge=1, description="episodes per adaptation step in meta-evaluation")
    eval_steps: tuple[int, ...] = Field((0, 1, 2, 3), min_length=1, description="adaptation steps to report")
    checkpoint_every: int = Field(5, ge=1, description="checkpoint every K iterations")
    keep_checkpoints: int = Field(3, ge=1, description="newest checkpoints kept on disk")
    overlap: bool = Field(False, description="collect the next iteration's first phase while the learner updates "
                          "(acting one policy version behind; not across a checkpoint, evaluation or stop)")
    robot_agnostic: bool = Field(False, description="also train the robot-agnostic yardstick at the end (MT-PPO "
                                 "over the same training fleet, no robot or task parameters: domain randomisation; "
                                 "same env steps) and evaluate it on the held-out robots")
    oracle: bool = Field(False, description="also train the oracle yardstick (MT-PPO given the true task params, "
                         "same env steps) at the end when the learner has none of its own (belief has): about "
                         "doubles the run's time")

    @field_validator("eval_steps")
    @classmethod
    def _sorted_steps(cls, steps: tuple[int, ...]) -> tuple[int, ...]:
        if any(s < 0 for s in steps) or list(steps) != sorted(set(steps)):
            raise ValueError(f"must be distinct non-negative integers in increasing order, got {list(steps)}")
        return steps


class TrackingConfig(_Strict):
    experiment: str = Field("metafleet", min_length=1, description="MLflow experiment name")
    tracking_uri: str | None = Field(
        None, description="MLflow URI; default MLFLOW_TRACKING_URI or sqlite:///mlflow.db"
    )
    registered_model: str = Field("reach-maml", min_length=1, description="registry name of the meta-policy")
    checkpoint_dir: str = Field("checkpoints", description="local checkpoint root (one folder per run)")
    parent_run_id: str | None = Field(None, description="MLflow run this run is a child of (set by `fleet sweep` "
                                      "for its trials: the sweep's parent run)")
    tags: dict[str, str] = Field(default_factory=dict, description="extra MLflow tags of the run (a sweep "
                                 "trial's name, grid point and seed)")


class Config(_Strict):
    """A whole training run."""

    name: str = Field("metafleet", min_length=1)
    fleet: FleetConfig = FleetConfig()
    workers: WorkersConfig = WorkersConfig()
    learner: LearnerConfig = LearnerConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        rma = self.learner.rma
        if self.learner.algorithm == "rma":
            if rma.history >= self.fleet.horizon:
                raise ValueError(f"learner.rma.history ({rma.history}) must be shorter than fleet.horizon "
                                 f"({self.fleet.horizon}): the adaptation module reads that many past steps")
            if self.train.overlap:
                raise ValueError("train.overlap cannot run with learner.algorithm rma: its phase changes between "
                                 "iterations, and a prefetched phase would be collected for the wrong one")
            if rma.adapt_from >= self.train.iterations:
                raise ValueError(f"learner.rma.adapt_from ({rma.adapt_from}) must be below train.iterations "
                                 f"({self.train.iterations}): phase 2 (the adaptation module) needs iterations")
        n = self.learner.trial_episodes
        if self.learner.algorithm == "rl2":
            for key in ("episodes_per_task", "eval_episodes"):
                if getattr(self.train, key) % n:
                    raise ValueError(f"train.{key} ({getattr(self.train, key)}) must be a multiple of "
                                     f"learner.trial_episodes ({n}) for rl2")
        return self

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, object]:
        """`section.key -> value` for MLflow params."""
        return dict(_flat_items(self.to_dict()))


def _flat_items(data: dict):
    for section, value in data.items():
        if isinstance(value, dict):
            for key, inner in value.items():
                yield f"{section}.{key}", inner
        else:
            yield section, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=value` overrides (value parsed as YAML: numbers, bools, lists)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set learner.inner_lr=0.05")
        node, parts = data, key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else raw
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, data: dict | None = None) -> Config:
    """Read, override and validate a config; raise ConfigError naming every bad key."""
    if data is None:
        data = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"config file {str(path)!r} not found")
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
            if not isinstance(data, dict):
                raise ConfigError(f"config file {str(path)!r} must hold a mapping, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc)) from None


def format_errors(exc: ValidationError) -> str:
    lines = ["invalid config:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            section = _model_at(err["loc"][:-1])
            known = ", ".join(section.model_fields) if section else ""
            lines.append(f"  {key}: unknown key (expected one of: {known})")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")  # a cross-field check gets its whole section: the message names the keys
            lines.append(f"  {key or 'config'}: {msg}" + ("" if isinstance(got, dict) else f" (got {got!r})"))
    return "\n".join(lines)


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model
