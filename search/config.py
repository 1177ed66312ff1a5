"""The study file: YAML -> validated, resolved :class:`StudyConfig`.

Validation happens before anything touches the database or Ray, so a bad file costs nothing
and writes nothing (the CLI exits with code 2 and names the field).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import optuna
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic import ValidationError as PydanticValidationError

from model.settings import DATASETS, TrialConfig, TrialSettings
from search.errors import ConfigError
from search.keys import DEFAULT_STORAGE
from spaces import FixedParam, Space, SpaceError, load_space
from spaces.language import CategoricalParam, FloatParam, IntParam, format_validation_error

ObjectiveMetric = Literal["val_acc", "val_loss", "train_acc", "train_loss"]
# Final evaluation trains on the training split, or on training + validation, then reads the
# test split once.
Refit = Literal["train", "train+val"]
REFITS: tuple[str, ...] = get_args(Refit)


def test_metric(metric: str) -> str:
    """The test split's counterpart of an objective metric: val_acc -> test_acc."""
    return "test_" + metric.split("_", 1)[1]


SamplerName = Literal["tpe", "random", "cmaes", "qmc", "grid"]
# Set by the study, not searchable: the epoch budget is ASHA's max_epochs.
STUDY_OWNED_FIELDS = ("epochs",)


class _Strict(BaseModel):
    # strict: YAML already gives types, so `n_trials: true` or `cpu: "1"` is a mistake.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DatasetConfig(_Strict):
    name: str = "digits"
    data_dir: str = "data"
    val_fraction: float | None = Field(None, gt=0, lt=1)
    split_seed: int = 0
    download: bool = True
    # cifar10: check each file against its published MD5 before reading it (false for
    # files of your own in the same format; they are still read with a restricted unpickler).
    verify: bool = True


class ObjectiveConfig(_Strict):
    metric: ObjectiveMetric = "val_acc"
    direction: Literal["maximize", "minimize"] | None = None

    @model_validator(mode="after")
    def _direction_fits_metric(self) -> ObjectiveConfig:
        natural = "maximize" if self.metric.endswith("acc") else "minimize"
        if self.direction is not None and self.direction != natural:
            raise ValueError(
                f"direction {self.direction} does not fit metric {self.metric}: accuracies "
                "are maximized and losses minimized; leave direction out"
            )
        return self

    @property
    def resolved_direction(self) -> str:
        if self.direction is not None:
            return self.direction
        return "maximize" if self.metric.endswith("acc") else "minimize"


class SamplerConfig(_Strict):
    name: SamplerName = "tpe"
    seed: int = 0
    n_startup_trials: int = Field(10, ge=0)


class AshaConfig(_Strict):
    max_epochs: int = Field(ge=1)
    grace_period: int = Field(1, ge=1)
    reduction_factor: int = Field(3, ge=2)
    enabled: bool = True

    @model_validator(mode="after")
    def _grace_within_budget(self) -> AshaConfig:
        if self.grace_period > self.max_epochs:
            raise ValueError(
                f"grace_period ({self.grace_period}) must be <= max_epochs ({self.max_epochs})"
            )
        return self


class CheckpointsConfig(_Strict):
    """Which trial checkpoints a study keeps (see search.engine._checkpoints)."""

    # COMPLETE trials whose last.pt stays: the best by the objective (at least 1, for
    # pretrained: study:NAME and final evaluation).
    keep: int = Field(3, ge=1)
    keep_all: bool = False  # keep every trial's checkpoints (pruned and failed ones too)


class ResourcesConfig(_Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


class RayConfig(_Strict):
    """The Ray cluster trials run on. ``address``: ``HOST:PORT`` of a running cluster's head
    (what ``ray start --head`` prints), ``auto`` (the cluster this machine has joined), or
    unset: Ray's own ``RAY_ADDRESS`` if set, else a new Ray on this machine. Not part of the
    study's identity: a study may continue on another cluster."""

    address: str | None = Field(None, min_length=1)


# A fixed number of trials at a time, or "auto": as many as the cluster's CPUs and GPUs hold
# at one trial's request (resolved when the run connects).
MaxConcurrent = Annotated[int, Field(ge=1)] | Literal["auto"]


class StudyConfig(_Strict):
    name: str = Field(min_length=1)
    kind: Literal["search"] = "search"
    dataset: DatasetConfig = DatasetConfig()
    space: str | dict[str, Any]
    fixed: dict[str, Any] = Field(default_factory=dict)
    objective: ObjectiveConfig = ObjectiveConfig()
    sampler: SamplerConfig = SamplerConfig()
    asha: AshaConfig
    n_trials: int = Field(ge=1)
    max_concurrent: MaxConcurrent = 1
    # A trial whose worker process dies is run again from its checkpoint this many times.
    max_failures: int = Field(2, ge=0)
    # The run stops proposing trials after this many FAIL in one run (default: n_trials,
    # at least 10).
    max_failed_trials: int | None = Field(None, ge=1)
    resources: ResourcesConfig = ResourcesConfig()
    ray: RayConfig = RayConfig()
    checkpoints: CheckpointsConfig = CheckpointsConfig()
    # Where checkpoints live when every node must reach them (a cluster without a shared
    # disk): a URL (s3://bucket/prefix, gs://..., file:///shared/folder). Default: output_dir.
    checkpoint_storage: str | None = Field(None, min_length=1)
    storage: str = DEFAULT_STORAGE
    output_dir: str = "runs"
    # A driver silent for this long loses its lease to the next driver of the study.
    lease_timeout_s: float = Field(60.0, ge=1)
    # Where the study file lives; relative space paths are looked up there first.
    source: str | None = Field(None, exclude=True)

    def resolve_space(self) -> Space:
        base = Path(self.source).parent if self.source else None
        try:
            return load_space(self.space, relative_to=base)
        except SpaceError as error:
            raise ConfigError(error.path, error.message, self.source) from None

    def trial_defaults(self) -> dict[str, Any]:
        """Settings every trial shares: the fixed block plus the study-owned epoch budget."""
        return {**self.fixed, "epochs": self.asha.max_epochs}

    def resolved(self) -> dict[str, Any]:
        """The study file as it will run (space expanded, defaults filled): provenance."""
        data = self.model_dump(mode="json")
        data["space"] = {
            n: p.model_dump(exclude_none=True) for n, p in self.resolve_space().params.items()
        }
        return data


def _check_against_trial_config(config: StudyConfig, space: Space) -> None:
    """Every searched or fixed name must be a trial setting and every value must be valid."""
    known = set(TrialConfig.model_fields) - set(STUDY_OWNED_FIELDS)
    for name in config.fixed:
        if name in space.params:
            raise ConfigError(
                f"fixed.{name}",
                f"is also searched (space.{name}); a fixed value would be silently ignored. "
                "Remove it from one of the two",
                config.source,
            )
    for section, names in (("space", space.params), ("fixed", config.fixed)):
        for name in names:
            if name in STUDY_OWNED_FIELDS:
                raise ConfigError(
                    f"{section}.{name}",
                    "is set by the study (asha.max_epochs is the epoch budget); remove it",
                    config.source,
                )
            if name not in known:
                raise ConfigError(
                    f"{section}.{name}",
                    f"unknown hyperparameter; known: {sorted(known)}",
                    config.source,
                )
    for name, value in config.fixed.items():
        _validate_value(config, f"fixed.{name}", name, value)
    for name, param in space.params.items():
        for field, value in _representative_values(param):
            _validate_value(config, f"space.{name}.{field}", name, value)
    _check_combinations(config, space)


def _check_combinations(config: StudyConfig, space: Space, samples: int = 32) -> None:
    """Settings that only make sense together (freeze_depth needs pretrained weights, ImageNet
    weights need the ImageNet stem...): check configurations sampled from the space, so a
    contradictory study fails now instead of failing every trial."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(samples):
        trial = probe.ask()
        candidate = {**config.fixed, **space.sample(trial)}
        probe.tell(trial, 0.0)
        try:
            TrialConfig.model_validate(candidate)
        except PydanticValidationError as error:
            message = error.errors()[0]["msg"].removeprefix("Value error, ")
            raise ConfigError(
                "space", f"{message} (in the sampled configuration {candidate})", config.source
            ) from None


def _representative_values(param: Any) -> list[tuple[str, Any]]:
    if isinstance(param, CategoricalParam):
        return [(f"choices[{i}]", choice) for i, choice in enumerate(param.choices)]
    if isinstance(param, FloatParam | IntParam):
        return [("low", param.low), ("high", param.high)]
    if isinstance(param, FixedParam):
        return [("value", param.value)]
    return []


def _validate_value(config: StudyConfig, path: str, name: str, value: Any) -> None:
    try:
        TrialSettings.model_validate({name: value})
    except PydanticValidationError as error:
        _, message = format_validation_error(path, error)
        raise ConfigError(path, message, config.source) from None


def check_gpu_share(devices: set[Any], resources: ResourcesConfig, source: str | None) -> None:
    """A trial that trains on CUDA needs a GPU share: Ray hides the GPUs from the others."""
    if "cuda" in devices and resources.gpu == 0:
        raise ConfigError(
            "resources.gpu",
            "trials with device: cuda need a GPU share per trial (e.g. resources: {gpu: 0.25} "
            "packs four trials on a GPU); Ray hides GPUs from trials that ask for none",
            source,
        )


def validated(kind: type[BaseModel], raw: dict[str, Any], source: str | None) -> Any:
    """The pydantic model of a study file, or a ConfigError naming the first bad field."""
    try:
        config = kind.model_validate({**raw, "source": source})
    except PydanticValidationError as error:
        path, message = format_validation_error("", error)
        raise ConfigError(path.lstrip(".") or "study", message, source) from None
    if config.dataset.name not in DATASETS:
        raise ConfigError(
            "dataset.name",
            f"unknown dataset {config.dataset.name!r}; known: {list(DATASETS)}",
            source,
        )
    return config


def parse_study(raw: Any, source: str | None = None) -> StudyConfig:
    """Validate a study given as a mapping; raise :class:`ConfigError` naming the field."""
    if not isinstance(raw, dict):
        raise ConfigError("study", "the study file must be a YAML mapping", source)
    if raw.get("kind") == "ablation":
        raise ConfigError("kind", "an ablation study: read it with load_study_file", source)
    config = validated(StudyConfig, raw, source)
    space = config.resolve_space()
    _check_against_trial_config(config, space)
    devices = {config.fixed.get("device"), *space.listed_values("device")}
    check_gpu_share(devices, config.resources, source)
    if config.sampler.name == "grid":
        try:
            space.grid()
        except SpaceError as error:
            raise ConfigError(
                error.path, f"sampler.name is grid: {error.message}", source
            ) from None
    return config
