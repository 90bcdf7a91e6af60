"""Typed, strict run configuration: YAML file + `--set a.b=value` overrides -> `Config`.

Unknown keys and wrong types are errors that name the key and what is expected; they are
raised before anything (Ray, MLflow, envs) starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ConfigError(ValueError):
    """A config that cannot run; the message says which key and what is expected."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FleetConfig(_Strict):
    family: str = Field("reach", description="task family (see `fleet tasks`)")
    robot: str = Field("kuka_iiwa", description="robot model of the fleet (see `fleet tasks`)")
    robot_id: str = Field("kuka-0", description="fleet instance id stamped on the data")
    num_train_tasks: int = Field(200, ge=1, description="size of the seeded meta-training task set")
    num_test_tasks: int = Field(40, ge=1, description="size of the disjoint held-out task set")
    task_seed: int = Field(0, description="seed of the train/test task split")
    horizon: int = Field(50, ge=1, le=10_000, description="steps per episode")

    @field_validator("family")
    @classmethod
    def _known_family(cls, name: str) -> str:
        from fleet.tasks import get_family

        get_family(name)  # raises with the list of known families
        return name

    @field_validator("robot")
    @classmethod
    def _known_robot(cls, name: str) -> str:
        from fleet.robots import get_robot_model

        get_robot_model(name)
        return name


class WorkersConfig(_Strict):
    backend: Literal["ray", "local"] = Field("ray", description="ray actors or in-process workers")
    num_workers: int = Field(2, ge=1, le=1024, description="rollout workers (1 CPU each under Ray)")


class LearnerConfig(_Strict):
    algorithm: Literal["maml", "mtppo"] = Field("maml", description="meta-learner or multi-task baseline")
    first_order: bool = Field(False, description="MAML: drop second-order terms (FO-MAML)")
    inner_lr: float = Field(0.1, gt=0, description="adaptation step size alpha")
    inner_steps: int = Field(1, ge=1, le=10, description="inner gradient steps during meta-training")
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


class Config(_Strict):
    """A whole training run."""

    name: str = Field("metafleet", min_length=1)
    fleet: FleetConfig = FleetConfig()
    workers: WorkersConfig = WorkersConfig()
    learner: LearnerConfig = LearnerConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()

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
            lines.append(f"  {key}: {msg} (got {err.get('input')!r})")
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
