"""Running an ablation on the search engine: queue the arm x seed cells, run, analyse."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError as PydanticValidationError

from model.train import TrialConfig, TrialSettings
from search.ablation_plan import (
    BASELINE,
    SEED_PARAM,
    AblationConfig,
    Arm,
    arm_of,
    engine_config,
    plan_arms,
    seeds_for,
)
from search.ablation_stats import ArmRun, ArmSummary, summarise
from search.config import STUDY_OWNED_FIELDS, ConfigError, check_gpu_share
from search.errors import UserError
from search.faults import Fault
from search.pretrained import STUDY_PREFIX, check_same_split
from search.resume import RETRYABLE_REASONS, IncompatibleStudyError
from search.studies import load_study_readonly
from spaces.language import format_validation_error

FROM_KEY = "from"


def validate_ablation(config: AblationConfig) -> None:
    """Names and values of the baseline and the factors, before anything runs."""
    for name, values in config.factors.items():
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
    for section, mapping in (("baseline", config.baseline), ("factors", config.factors)):
        for name in mapping:
            if section == "baseline" and name == FROM_KEY:
                continue
            if name not in known:
                raise ConfigError(
                    f"{section}.{name}", f"unknown setting; known: {sorted(known)}", config.source
                )
    for name, value in config.baseline.items():
        if name != FROM_KEY:
            _check_value(config, f"baseline.{name}", name, value)
    for name, values in config.factors.items():
        listed = values if isinstance(values, list) else [values]
        for index, value in enumerate(listed):
            where = f"factors.{name}[{index}]" if isinstance(values, list) else f"factors.{name}"
            _check_value(config, where, name, value)
    devices = {config.baseline.get("device")}
    factor_devices = config.factors.get("device", [])
    devices |= set(factor_devices if isinstance(factor_devices, list) else [factor_devices])
    check_gpu_share(devices, config.resources, config.source)
    source = config.baseline.get(FROM_KEY)
    if source is not None and not (isinstance(source, str) and source.startswith(STUDY_PREFIX)):
        raise ConfigError("baseline.from", "must be study:NAME", config.source)
    if source is None:
        _check_arms(config, with_factor_defaults(config, config.baseline))


def with_factor_defaults(config: AblationConfig, baseline: dict[str, Any]) -> dict[str, Any]:
    """A factor the baseline does not set takes the trial default (its value in every trial
    that does not vary it), so every arm differs from the baseline in named settings only."""
    defaults = {
        name: TrialSettings.model_fields[name].default
        for name in config.factors
        if name not in baseline and name in TrialSettings.model_fields
    }
    return {**defaults, **baseline}


def _check_value(config: AblationConfig, path: str, name: str, value: Any) -> None:
    try:
        TrialSettings.model_validate({name: value})
    except PydanticValidationError as error:
        raise ConfigError(path, format_validation_error(path, error)[1], config.source) from None


def _check_arms(config: AblationConfig, baseline: dict[str, Any]) -> None:
    for arm in plan_arms(baseline, config.factors, config.design):
        candidate = {**baseline, **arm.values, "epochs": config.epochs}
        try:
            TrialConfig.model_validate(candidate)
        except PydanticValidationError as error:
            message = error.errors()[0]["msg"].removeprefix("Value error, ")
            raise ConfigError("factors", f"arm {arm.name}: {message}", config.source) from None


def resolve_baseline(config: AblationConfig) -> dict[str, Any]:
    """The baseline written out, or the best trial's settings of ``from: study:NAME``."""
    overrides = {k: v for k, v in config.baseline.items() if k != FROM_KEY}
    source = config.baseline.get(FROM_KEY)
    if source is None:
        return with_factor_defaults(config, overrides)
    study = load_study_readonly(source[len(STUDY_PREFIX) :], config.storage)
    # Settings chosen on another split's validation images would be judged on images they
    # were chosen with (or trained on).
    check_same_split("baseline.from", source, study, config.dataset.model_dump())
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise UserError(f"baseline.from: {source} has no COMPLETE trial yet")
    best = study.best_trial
    settings = dict(best.user_attrs.get("config") or best.params)
    settings.pop("epochs", None)
    baseline = with_factor_defaults(config, {**settings, **overrides})
    _check_arms(config, baseline)
    return baseline


def _params(trial: FrozenTrial) -> dict[str, Any]:
    # A queued (WAITING) trial keeps its parameters in the fixed_params system attribute.
    return dict(trial.params) or dict(trial.system_attrs.get("fixed_params", {}))


@dataclass
class AblationPlan:
    """The cells to run; ``seeds`` grows with sequential seeds and with what the study holds."""

    config: AblationConfig
    baseline: dict[str, Any]
    arms: list[Arm]
    seeds: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for arm in self.arms:
            self.seeds.setdefault(arm.name, seeds_for(self.config))

    def describe(self, params: dict[str, Any]) -> dict[str, Any]:
        arm = arm_of(self.arms, params)
        return {"arm": arm.name if arm else "unplanned", "seed": params.get(SEED_PARAM)}

    def record(self) -> dict[str, Any]:
        """What the study keeps of the plan (the ``ablation`` user attribute)."""
        return {
            "design": self.config.design,
            "baseline_arm": BASELINE,
            "arms": [arm.name for arm in self.arms],
            "baseline": self.baseline,
            "factors": self.config.factors,
            "epochs": self.config.epochs,
        }

    def check(self, study: optuna.Study) -> None:
        """Refuse to continue a study whose plan was different (design, factors, baseline):
        the new arms would never reach its table."""
        stored = study.user_attrs.get("ablation")
        if not stored:
            return
        current = self.record()
        lines = [
            f"{key}: {stored.get(key)!r} -> {current[key]!r}"
            for key in ("design", "factors", "baseline", "epochs", "arms")
            if stored.get(key) != current[key]
        ]
        if lines:
            shown = "\n  ".join(lines)
            raise IncompatibleStudyError(
                f"ablation {study.study_name!r} already exists with another plan:\n  {shown}\n"
                "Run it with its original file, or start a new ablation study from this file: "
                "resnet-hpo run FILE.yaml --fork NEW_NAME (cells of the same arms and seeds "
                "are carried over)"
            )

    def enqueue_missing(self, study: optuna.Study) -> int:
        """Queue every planned cell that no trial of the study covers yet (so no arm x seed
        runs twice, across crashes and reruns); returns how many were queued."""
        if "ablation" not in study.user_attrs:
            study.set_user_attr("ablation", self.record())
        covered: set[tuple[str, int]] = set()
        for trial in study.get_trials(deepcopy=False):
            lost = trial.state == TrialState.FAIL and (
                trial.user_attrs.get("stop_reason") in RETRYABLE_REASONS
            )
            if lost:
                continue  # its retry (queued by the lease holder) covers the cell, or nothing
            params = _params(trial)
            arm = arm_of(self.arms, params)
            if arm is not None and SEED_PARAM in params:
                covered.add((arm.name, params[SEED_PARAM]))
                if params[SEED_PARAM] not in self.seeds[arm.name]:
                    self.seeds[arm.name].append(params[SEED_PARAM])
        queued = 0
        for arm in self.arms:
            for seed in sorted(self.seeds[arm.name]):
                if (arm.name, seed) not in covered:
                    study.enqueue_trial(
                        {**arm.values, SEED_PARAM: seed},
                        user_attrs={"arm": arm.name, "seed": seed},
                        skip_if_exists=False,
                    )
                    queued += 1
        return queued

    def add_seed(self, arm: str) -> bool:
        """One more seed for ``arm`` and the baseline (keeps the pairing); False at the cap."""
        assert self.config.sequential is not None
        if len(self.seeds[arm]) >= self.config.sequential.max_seeds:
            return False
        used = self.seeds[arm]
        seed = next(s for s in range(self.config.first_seed, 10**6) if s not in used)
        used.append(seed)
        if seed not in self.seeds[BASELINE]:
            self.seeds[BASELINE].append(seed)
        return True


def ablation_runs(study: optuna.Study) -> list[ArmRun]:
    """COMPLETE trials as (arm, seed, value, seconds)."""
    return [
        ArmRun(
            arm=t.user_attrs["arm"],
            seed=int(t.user_attrs["seed"]),
            value=float(t.value),
            seconds=float(t.user_attrs.get("train_seconds", t.user_attrs.get("wall_seconds", 0))),
        )
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "arm" in t.user_attrs and t.value is not None
    ]


def missing_reasons(study: optuna.Study) -> dict[str, str]:
    """Why each arm lacks finished cells: its trials by state and failure reasons."""
    states: dict[str, dict[str, int]] = {}
    for trial in study.get_trials(deepcopy=False):
        arm = trial.user_attrs.get("arm")
        if arm is None or trial.state == TrialState.COMPLETE:
            continue
        label = trial.state.name
        if trial.state == TrialState.FAIL:
            label = f"FAIL {trial.user_attrs.get('stop_reason', 'unknown')}"
        counts = states.setdefault(arm, {})
        counts[label] = counts.get(label, 0) + 1
    return {
        arm: "no finished cell: " + ", ".join(f"{n} {label}" for label, n in sorted(c.items()))
        for arm, c in states.items()
    }


def analyse(study: optuna.Study) -> list[ArmSummary]:
    info = study.user_attrs.get("ablation")
    if not info:
        raise UserError(f"study {study.study_name!r} is not an ablation study (kind: ablation)")
    return summarise(
        ablation_runs(study), info["baseline_arm"], info["arms"], missing_reasons(study)
    )


@dataclass(frozen=True)
class AblationResult:
    rows: list[ArmSummary]
    gave_up: bool  # the run stopped after max_failed_trials failures; cells are missing
    name: str = ""  # the study that holds it (the fork's name after --fork)
    interrupted: str | None = None  # the signal that ended the run early

    @property
    def missing_arms(self) -> list[str]:
        return [row.arm for row in self.rows if row.n == 0]


def run_ablation(
    config: AblationConfig,
    stream: TextIO | None = None,
    faults: dict[int, Fault] | None = None,
    fork: str | None = None,
) -> AblationResult:
    """Run every arm x seed (resuming what the study holds), then sequential seeds if asked.
    ``fork`` starts a new ablation study of that name from this file, carrying over the
    finished cells of the existing one whose arm and seed the new plan has."""
    from search.runner import run_study

    stream = stream or sys.stdout
    baseline = resolve_baseline(config)
    arms = plan_arms(baseline, config.factors, config.design)
    plan = AblationPlan(config, baseline, arms)
    engine = engine_config(config, baseline, arms)
    stream.write(
        f"ablation {config.name!r}: {len(arms)} arms ({config.design}) x {config.seeds} seeds, "
        f"{config.epochs} epochs each\n"
    )
    name = fork or config.name
    while True:
        summary = run_study(engine, stream=stream, faults=faults, plan=plan, fork=fork)
        if fork:
            engine = engine.model_copy(update={"name": fork})
            fork = None  # later rounds continue the fork
        study = load_study_readonly(name, config.storage)
        rows = analyse(study)
        if config.sequential is None or summary.gave_up or summary.interrupted:
            return AblationResult(rows, summary.gave_up, name, summary.interrupted)
        unsettled = [r.arm for r in rows if r.arm != BASELINE and not r.settled]
        extended = [arm for arm in unsettled if plan.add_seed(arm)]
        if not extended:
            return AblationResult(rows, gave_up=False, name=name)
        stream.write(f"sequential seeds: one more seed for {extended} (and the baseline)\n")
