"""Ablation studies: the file format and the plan of arms x seeds.

An ablation is a set of *arms* (configurations) trained with the same seeds, so that each
arm's difference to the baseline can be paired seed by seed. Designs:

* ``one_at_a_time``: the baseline, plus one arm per factor value that differs from it;
* ``leave_one_out``: the baseline is the full configuration; each factor names the value
  that removes that component (``augmentation: none``), one arm per factor;
* ``factorial``: every combination of the factors' values (the baseline's is one of them);
* ``path``: the ablation path from the baseline to a ``target`` configuration (Fawcett &
  Hoos 2016): the factors are the settings in which the two differ, and the arms are
  chosen step by step from the results (see :mod:`search.ablation._path`).

Each arm x seed is one Optuna trial whose parameters are the factors plus ``seed``, queued
with ``enqueue_trial``: the database stays a standard Optuna study.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from model.settings import TrialConfig, TrialSettings
from search.config import (
    STUDY_OWNED_FIELDS,
    CheckpointsConfig,
    DatasetConfig,
    MaxConcurrent,
    ObjectiveConfig,
    RayConfig,
    ResourcesConfig,
    StudyConfig,
    check_gpu_share,
)
from search.errors import ConfigError
from search.keys import DEFAULT_STORAGE, STUDY_PREFIX
from spaces.language import format_validation_error

BASELINE = "baseline"
# baseline: {from: "study:NAME"} takes the settings of that study's best trial.
FROM_KEY = "from"
SEED_PARAM = "seed"
SEED_RANGE = (0, 9_999)  # a fixed distribution, so that adding seeds keeps the space
PATH = "path"
# The fields only design: path takes; the other designs take factors instead.
PATH_ONLY_FIELDS = ("target", "together", "max_arms")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SequentialSeeds(_Strict):
    """Add a seed to every unsettled arm (and the baseline) until its paired CI excludes 0."""

    max_seeds: int = Field(ge=2)


class AblationConfig(_Strict):
    name: str = Field(min_length=1)
    kind: Literal["ablation"]
    dataset: DatasetConfig = DatasetConfig()
    baseline: dict[str, Any]
    # Required by every design but path, which derives them from the baseline and target.
    factors: dict[str, Any] | None = None
    design: Literal["one_at_a_time", "leave_one_out", "factorial", "path"] = "one_at_a_time"
    # design: path only. The configuration the path ends at: the baseline with the settings
    # written here changed, or {from: study:NAME} (that search's best trial, + overrides).
    target: dict[str, Any] | None = None
    # Settings that must move together along the path (beyond what the space's `when` says).
    together: list[list[str]] | None = None
    # More candidate arms than this (d(d+1)/2 for d groups): each group alone + the target.
    max_arms: int | None = Field(None, ge=1)
    seeds: int = Field(3, ge=1)
    first_seed: int = 0
    sequential: SequentialSeeds | None = None
    epochs: int = Field(ge=1)
    objective: ObjectiveConfig = ObjectiveConfig()
    # The same run settings as a search study's, in the same order (see StudyConfig).
    max_concurrent: MaxConcurrent = 1
    max_failures: int = Field(2, ge=0)
    resources: ResourcesConfig = ResourcesConfig()
    ray: RayConfig = RayConfig()
    checkpoints: CheckpointsConfig = CheckpointsConfig()
    checkpoint_storage: str | None = Field(None, min_length=1)
    storage: str = DEFAULT_STORAGE
    output_dir: str = "runs"
    lease_timeout_s: float = Field(60.0, ge=1)
    source: str | None = Field(None, exclude=True)


@dataclass(frozen=True)
class Arm:
    name: str
    values: dict[str, Any]  # the factors' values in this arm


def arm_name(changes: dict[str, Any]) -> str:
    if not changes:
        return BASELINE
    return ",".join(f"{k}={_text(v)}" for k, v in changes.items())


def _text(value: Any) -> str:
    return (
        "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    )


def plan_arms(baseline: dict[str, Any], factors: dict[str, Any], design: str) -> list[Arm]:
    """The arms of an ablation, baseline first. ``values`` hold every factor's value."""
    base = {name: baseline.get(name) for name in factors}
    arms = [Arm(BASELINE, dict(base))]
    if design == "one_at_a_time":
        for name, variants in factors.items():
            for value in variants:
                if value != base[name]:
                    arms.append(Arm(arm_name({name: value}), {**base, name: value}))
    elif design == "leave_one_out":
        for name, removed in factors.items():
            if removed != base[name]:
                arms.append(Arm(arm_name({name: removed}), {**base, name: removed}))
    else:
        names = list(factors)
        for combination in itertools.product(*(factors[n] for n in names)):
            values = dict(zip(names, combination, strict=True))
            if values != base:
                changes = {n: v for n, v in values.items() if v != base[n]}
                arms.append(Arm(arm_name(changes), values))
    return arms


def arm_of(arms: list[Arm], params: dict[str, Any]) -> Arm | None:
    for arm in arms:
        if all(params.get(name) == value for name, value in arm.values.items()):
            return arm
    return None


def factor_choices(arms: list[Arm]) -> dict[str, list[Any]]:
    choices: dict[str, list[Any]] = {}
    for arm in arms:
        for name, value in arm.values.items():
            if value not in choices.setdefault(name, []):
                choices[name].append(value)
    return choices


def engine_config(config: AblationConfig, baseline: dict[str, Any], arms: list[Arm]) -> StudyConfig:
    """The search-engine study that runs this ablation: the factors (and the seed) are the
    parameters, everything else of the baseline is fixed, no early stopping."""
    space: dict[str, Any] = {
        name: {"type": "categorical", "choices": values}
        for name, values in factor_choices(arms).items()
    }
    space[SEED_PARAM] = {"type": "int", "low": SEED_RANGE[0], "high": SEED_RANGE[1]}
    fixed = {k: v for k, v in baseline.items() if k not in space and k != "epochs"}
    return StudyConfig(
        name=config.name,
        dataset=config.dataset,
        space=space,
        fixed=fixed,
        objective=config.objective,
        sampler={"name": "random", "seed": 0},
        asha={"max_epochs": config.epochs, "enabled": False},
        n_trials=len(arms) * config.seeds,
        max_concurrent=config.max_concurrent,
        max_failures=config.max_failures,
        resources=config.resources,
        ray=config.ray,
        checkpoints=config.checkpoints,
        checkpoint_storage=config.checkpoint_storage,
        storage=config.storage,
        output_dir=config.output_dir,
        lease_timeout_s=config.lease_timeout_s,
        source=config.source,
    )


def seeds_for(config: AblationConfig, count: int | None = None) -> list[int]:
    return [config.first_seed + i for i in range(count or config.seeds)]


def validate_ablation(config: AblationConfig) -> None:
    """Names and values of the baseline and the factors (or the target), before anything
    runs."""
    factors = _check_design_fields(config)
    for name, values in factors.items():
        if config.design == "leave_one_out":
            if isinstance(values, list | dict):
                raise ConfigError(
                    f"factors.{name}",
                    "leave_one_out takes one value per factor: the value that removes it "
                    f"(e.g. augmentation: none), got {values!r}",
                    config.source,
                )
        elif not isinstance(values, list) or not values:
            raise ConfigError(
                f"factors.{name}", f"give a non-empty list of values, got {values!r}", config.source
            )
        else:
            for index, value in enumerate(values):
                if value in values[:index]:
                    raise ConfigError(
                        f"factors.{name}[{index}]",
                        f"repeats {value!r}: each value once (a repeated value would run the "
                        "same arm twice)",
                        config.source,
                    )
    if config.sequential and config.sequential.max_seeds < config.seeds:
        raise ConfigError("sequential.max_seeds", "must be >= seeds", config.source)
    known = set(TrialSettings.model_fields) - set(STUDY_OWNED_FIELDS)
    target = config.target or {}
    sections = (("baseline", config.baseline), ("factors", factors), ("target", target))
    for section, mapping in sections:
        for name in mapping:
            if section != "factors" and name == FROM_KEY:
                continue
            if name not in known:
                raise ConfigError(
                    f"{section}.{name}", f"unknown setting; known: {sorted(known)}", config.source
                )
    for section, mapping in (("baseline", config.baseline), ("target", target)):
        for name, value in mapping.items():
            if name != FROM_KEY:
                _check_value(config, f"{section}.{name}", name, value)
    for index, group in enumerate(config.together or []):
        for position, name in enumerate(group):
            if name not in known:
                raise ConfigError(
                    f"together[{index}][{position}]",
                    f"unknown setting {name!r}; known: {sorted(known)}",
                    config.source,
                )
    for name, values in factors.items():
        listed = values if isinstance(values, list) else [values]
        for index, value in enumerate(listed):
            where = f"factors.{name}[{index}]" if isinstance(values, list) else f"factors.{name}"
            _check_value(config, where, name, value)
    devices = {config.baseline.get("device"), target.get("device")}
    factor_devices = factors.get("device", [])
    devices |= set(factor_devices if isinstance(factor_devices, list) else [factor_devices])
    check_gpu_share(devices, config.resources, config.source)
    for section, mapping in (("baseline", config.baseline), ("target", target)):
        source = mapping.get(FROM_KEY)
        if source is not None and not (isinstance(source, str) and source.startswith(STUDY_PREFIX)):
            raise ConfigError(f"{section}.from", "must be study:NAME", config.source)
    if config.baseline.get(FROM_KEY) is None:
        check_arms(config, with_factor_defaults(config, config.baseline))


def _check_design_fields(config: AblationConfig) -> dict[str, Any]:
    """The fields each design takes: factors for all but path; target (and the optional
    together, max_arms) for path only. Returns the factors (none for path)."""
    if config.design == PATH:
        if config.factors is not None:
            raise ConfigError(
                "factors",
                "design: path derives its factors (every setting in which the baseline and "
                "the target differ); remove factors",
                config.source,
            )
        if config.target is None:
            raise ConfigError(
                "target",
                "design: path needs the configuration it ends at: written out, or "
                "{from: study:NAME} (that search's best trial)",
                config.source,
            )
        if config.sequential is not None:
            raise ConfigError(
                "sequential",
                "design: path picks each step from its seeds' results; it does not add seeds",
                config.source,
            )
        return {}
    for name in PATH_ONLY_FIELDS:
        if getattr(config, name) is not None:
            raise ConfigError(
                name, f"only for design: path (this is design: {config.design})", config.source
            )
    if not config.factors:
        raise ConfigError(
            "factors",
            f"design: {config.design} needs a non-empty mapping of settings to vary",
            config.source,
        )
    return config.factors


def with_factor_defaults(config: AblationConfig, baseline: dict[str, Any]) -> dict[str, Any]:
    """A factor the baseline does not set takes the trial default (its value in every trial
    that does not vary it), so every arm differs from the baseline in named settings only."""
    defaults = {
        name: TrialSettings.model_fields[name].default
        for name in config.factors or {}
        if name not in baseline and name in TrialSettings.model_fields
    }
    return {**defaults, **baseline}


def _check_value(config: AblationConfig, path: str, name: str, value: Any) -> None:
    try:
        TrialSettings.model_validate({name: value})
    except PydanticValidationError as error:
        raise ConfigError(path, format_validation_error(path, error)[1], config.source) from None


def check_arms(config: AblationConfig, baseline: dict[str, Any]) -> None:
    if config.factors is None:
        return  # design: path checks its arms once the target is resolved (search.ablation._path)
    for arm in plan_arms(baseline, config.factors, config.design):
        candidate = {**baseline, **arm.values, "epochs": config.epochs}
        try:
            TrialConfig.model_validate(candidate)
        except PydanticValidationError as error:
            message = error.errors()[0]["msg"].removeprefix("Value error, ")
            raise ConfigError("factors", f"arm {arm.name}: {message}", config.source) from None
