"""The queue of an ablation: its arm x seed cells as queued Optuna trials, never one twice."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.ablation._design import (
    BASELINE,
    FROM_KEY,
    PATH,
    SEED_PARAM,
    AblationConfig,
    Arm,
    arm_of,
    check_arms,
    seeds_for,
    with_factor_defaults,
)
from search.ablation._path import FALLBACK, GREEDY, PathDesign, check_path_arms, plan_path
from search.errors import IncompatibleStudyError, UserError
from search.keys import RETRYABLE_REASONS, STUDY_PREFIX, Attr, StudyAttr
from search.store import check_same_split, load_study_readonly


@dataclass
class SourcePins:
    """What each ``from: study:NAME`` resolved to: the ablation's record keeps it, so that
    running the same file again continues the ablation it started, even after that search
    found a new best meanwhile (resolving anew would be a changed plan, refused). The pin
    holds while the section names the same source study, the same study (not one deleted
    and made again under its name); overrides written next to ``from`` apply on top as
    always. Otherwise the section is resolved anew (and refused as a changed plan, as any
    change is)."""

    pinned: dict[str, Any] = field(default_factory=dict)  # from the study's record
    resolved: dict[str, Any] = field(default_factory=dict)  # section -> spec, trial, settings
    notes: list[str] = field(default_factory=list)  # a pin the search's best has moved past

    @classmethod
    def of_study(cls, study: optuna.Study | None) -> SourcePins:
        record = study.user_attrs.get(StudyAttr.ABLATION) if study is not None else None
        return cls(pinned=dict((record or {}).get("sources") or {}))

    def settings(self, config: AblationConfig, section: str, spec: dict[str, Any]) -> dict:
        source = spec[FROM_KEY]
        written = json.loads(json.dumps(spec))  # as the record stores it
        study, best = _best_trial(config, section, source)
        uid = study.user_attrs.get(StudyAttr.UID)
        pin = self.pinned.get(section)
        same_source = pin is not None and (pin.get("spec") or {}).get(FROM_KEY) == source
        if pin is not None and same_source and pin.get("study") == uid:
            entry = pin
            if pin["trial"] != best.number:
                self.notes.append(
                    f"{section}: {source}'s trial #{pin['trial']}, its best when this ablation "
                    f"started; its best is now #{best.number} (--fork NEW_NAME ablates from "
                    "that)"
                )
        else:
            entry = {"spec": written, "study": uid, "trial": best.number,
                     "settings": _settings_of(best)}  # fmt: skip
        self.resolved[section] = entry
        return dict(entry["settings"])


def resolve_baseline(config: AblationConfig, pins: SourcePins | None = None) -> dict[str, Any]:
    """The baseline written out, or the best trial's settings of ``from: study:NAME``
    (as ``pins`` recorded it when the ablation started, if they did)."""
    pins = pins if pins is not None else SourcePins()
    overrides = {k: v for k, v in config.baseline.items() if k != FROM_KEY}
    source = config.baseline.get(FROM_KEY)
    if source is None:
        return with_factor_defaults(config, overrides)
    settings = pins.settings(config, "baseline", config.baseline)
    baseline = with_factor_defaults(config, {**settings, **overrides})
    check_arms(config, baseline)
    return baseline


def resolve_target(
    config: AblationConfig, baseline: dict[str, Any], pins: SourcePins | None = None
) -> dict[str, Any]:
    """design: path's target. Written out, it is the baseline with the settings it names
    changed (a partial target never changes settings it does not mention); ``from:
    study:NAME`` is that trial's whole configuration (a setting it does not set trained
    with the trial default), plus the overrides written next to ``from``."""
    target = config.target or {}
    overrides = {k: v for k, v in target.items() if k != FROM_KEY}
    source = target.get(FROM_KEY)
    if source is None:
        # The written settings first: their order is the order of the path's groups.
        return {**overrides, **{k: v for k, v in baseline.items() if k not in overrides}}
    pins = pins if pins is not None else SourcePins()
    return {**pins.settings(config, "target", target), **overrides}


def _best_trial(
    config: AblationConfig, section: str, source: str
) -> tuple[optuna.Study, FrozenTrial]:
    study = load_study_readonly(source[len(STUDY_PREFIX) :], config.storage)
    # Settings chosen on another split's validation images would be judged on images they
    # were chosen with (or trained on).
    check_same_split(f"{section}.from", source, study, config.dataset.model_dump())
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise UserError(f"{section}.from: {source} has no COMPLETE trial yet")
    return study, study.best_trial


def _settings_of(trial: FrozenTrial) -> dict[str, Any]:
    settings = dict(trial.user_attrs.get(Attr.CONFIG) or trial.params)
    settings.pop("epochs", None)
    return settings


def space_parents(config: AblationConfig) -> dict[str, list[str]]:
    """Setting -> the settings its ``when`` depends on, in the resolved spaces of the
    search studies the baseline and the target come from (a written-out one has none)."""
    parents: dict[str, list[str]] = {}
    for mapping in (config.baseline, config.target or {}):
        source = mapping.get(FROM_KEY)
        if source is None:
            continue
        study = load_study_readonly(source[len(STUDY_PREFIX) :], config.storage)
        space = (study.user_attrs.get(StudyAttr.STUDY_FILE) or {}).get("space") or {}
        for name, param in space.items():
            when = param.get("when") if isinstance(param, dict) else None
            for parent in when or {}:
                if parent not in parents.setdefault(name, []):
                    parents[name].append(parent)
    return parents


def _changed_plan(name: str, lines: list[str]) -> str:
    shown = "\n  ".join(lines)
    return (
        f"ablation {name!r} already exists with another plan:\n  {shown}\n"
        "Run it with its original file, or start a new ablation study from this file: "
        "resnet-hpo run FILE.yaml --fork NEW_NAME (cells of the same arms and seeds "
        "are carried over)"
    )


def enqueue_cell(study: optuna.Study, arm: Arm, seed: int) -> None:
    """Queue one arm x seed cell: its parameters, and its arm and seed as user attributes."""
    study.enqueue_trial(
        {**arm.values, SEED_PARAM: seed},
        user_attrs={Attr.ARM: arm.name, Attr.SEED: seed},
        skip_if_exists=False,
    )


def queued_params(trial: FrozenTrial) -> dict[str, Any]:
    # A queued (WAITING) trial keeps its parameters in the fixed_params system attribute.
    return dict(trial.params) or dict(trial.system_attrs.get("fixed_params", {}))


@dataclass
class AblationPlan:
    """The cells to run; ``seeds`` grows with sequential seeds and with what the study holds."""

    config: AblationConfig
    baseline: dict[str, Any]
    arms: list[Arm]
    seeds: dict[str, list[int]] = field(default_factory=dict)
    sources: dict[str, Any] = field(default_factory=dict)  # SourcePins.resolved

    def __post_init__(self) -> None:
        for arm in self.arms:
            self.seeds.setdefault(arm.name, seeds_for(self.config))

    def describe(self, params: dict[str, Any]) -> dict[str, Any]:
        arm = arm_of(self.arms, params)
        return {Attr.ARM: arm.name if arm else "unplanned", Attr.SEED: params.get(SEED_PARAM)}

    def record(self) -> dict[str, Any]:
        """What the study keeps of the plan (the ``ablation`` user attribute)."""
        return {
            "design": self.config.design,
            "baseline_arm": BASELINE,
            "arms": [arm.name for arm in self.arms],
            "baseline": self.baseline,
            "factors": self.config.factors,
            "epochs": self.config.epochs,
            "sources": self.sources,
        }

    def check(self, study: optuna.Study) -> None:
        """Refuse to continue a study whose plan was different (design, factors, baseline):
        the new arms would never reach its table."""
        stored = study.user_attrs.get(StudyAttr.ABLATION)
        if not stored:
            return
        current = self.record()
        lines = [
            f"{key}: {stored.get(key)!r} -> {current[key]!r}"
            for key in ("design", "factors", "baseline", "epochs", "arms")
            if stored.get(key) != current[key]
        ]
        if lines:
            raise IncompatibleStudyError(_changed_plan(study.study_name, lines))

    def enqueue_missing(self, study: optuna.Study) -> int:
        """Queue every planned cell that no trial of the study covers yet (so no arm x seed
        runs twice, across crashes and reruns); returns how many were queued."""
        stored = study.user_attrs.get(StudyAttr.ABLATION)
        if stored is None:
            study.set_user_attr(StudyAttr.ABLATION, self.record())
        elif "sources" not in stored and self.sources:
            # Recorded before pins were: the plan passed check(), so pin what it resolved to.
            study.set_user_attr(StudyAttr.ABLATION, {**stored, "sources": self.sources})
        covered: set[tuple[str, int]] = set()
        for trial in study.get_trials(deepcopy=False):
            lost = trial.state == TrialState.FAIL and (
                trial.user_attrs.get(Attr.STOP_REASON) in RETRYABLE_REASONS
            )
            if lost:
                continue  # its retry (queued by the lease holder) covers the cell, or nothing
            params = queued_params(trial)
            arm = arm_of(self.arms, params)
            if arm is not None and SEED_PARAM in params:
                covered.add((arm.name, params[SEED_PARAM]))
                if params[SEED_PARAM] not in self.seeds[arm.name]:
                    self.seeds[arm.name].append(params[SEED_PARAM])
        queued = 0
        for arm in self.arms:
            for seed in sorted(self.seeds[arm.name]):
                if (arm.name, seed) not in covered:
                    enqueue_cell(study, arm, seed)
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


@dataclass
class PathQueue:
    """design: path's queue: the cells of the arms the path has proposed so far (they grow
    round by round) and the study's record of the plan, which refuses a changed file but
    not a resumed path."""

    config: AblationConfig
    baseline: dict[str, Any]  # the full configurations, resolved
    target: dict[str, Any]
    design: PathDesign
    ran: str  # GREEDY or FALLBACK: the design that actually runs
    arms: list[Arm] = field(default_factory=list)
    sources: dict[str, Any] = field(default_factory=dict)  # SourcePins.resolved

    def __post_init__(self) -> None:
        self.set_arms(self.arms or [self.design.arm(())])

    def set_arms(self, arms: list[Arm]) -> None:
        self.arms = list(arms)
        self._cells = AblationPlan(self.config, self.baseline, self.arms)

    def describe(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._cells.describe(params)

    def record(self) -> dict[str, Any]:
        return {
            "design": PATH,
            "ran": self.ran,
            "baseline_arm": BASELINE,
            "arms": [arm.name for arm in self.arms],
            "baseline": self.baseline,
            "target": self.target,
            "groups": [list(group) for group in self.design.groups],
            "path": self.design.record(),
            "epochs": self.config.epochs,
            "seeds": seeds_for(self.config),
            "sources": self.sources,
        }

    def check(self, study: optuna.Study) -> None:
        """Refuse a study whose plan differs (design, baseline, target, groups, epochs,
        seeds): its path would mix two experiments. More arms is a path that went on."""
        stored = study.user_attrs.get(StudyAttr.ABLATION)
        if not stored:
            return
        current = json.loads(json.dumps(self.record()))  # as the study stores it
        lines = [
            f"{key}: {stored.get(key)!r} -> {current[key]!r}"
            for key in PATH_COMPARED
            if stored.get(key) != current[key]
        ]
        if lines:
            raise IncompatibleStudyError(_changed_plan(study.study_name, lines))

    def enqueue_missing(self, study: optuna.Study) -> int:
        # The record follows the arms: the table (analyse) lists every arm proposed so far.
        study.set_user_attr(StudyAttr.ABLATION, self.record())
        return self._cells.enqueue_missing(study)


# What a path study's record must keep across runs (its arms grow as the path goes on).
PATH_COMPARED = ("design", "ran", "baseline", "target", "groups", "epochs", "seeds")


def resolve_path(config: AblationConfig, pins: SourcePins | None = None) -> PathQueue:
    """The resolved baseline and target, their differing settings in groups, and which
    design runs (greedy, or the fallback above max_arms); checked before anything runs."""
    pins = pins if pins is not None else SourcePins()
    baseline = resolve_baseline(config, pins)
    target = resolve_target(config, baseline, pins)
    maximize = config.objective.resolved_direction == "maximize"
    design = plan_path(baseline, target, space_parents(config), config.together or [], maximize)
    check_path_arms(config, baseline, design)
    full_baseline = {**baseline, **design.baseline}
    full_target = {**target, **design.target}
    ran = GREEDY
    if config.max_arms is not None and design.greedy_arm_count > config.max_arms:
        ran = FALLBACK
    return PathQueue(config, full_baseline, full_target, design, ran, sources=pins.resolved)
