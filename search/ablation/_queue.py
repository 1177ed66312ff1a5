"""The queue of an ablation: its arm x seed cells as queued Optuna trials, never one twice."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.ablation._design import (
    BASELINE,
    FROM_KEY,
    SEED_PARAM,
    AblationConfig,
    Arm,
    arm_of,
    check_arms,
    seeds_for,
    with_factor_defaults,
)
from search.errors import IncompatibleStudyError, UserError
from search.keys import RETRYABLE_REASONS, STUDY_PREFIX, Attr, StudyAttr
from search.store import check_same_split, load_study_readonly


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
    settings = dict(best.user_attrs.get(Attr.CONFIG) or best.params)
    settings.pop("epochs", None)
    baseline = with_factor_defaults(config, {**settings, **overrides})
    check_arms(config, baseline)
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
        if StudyAttr.ABLATION not in study.user_attrs:
            study.set_user_attr(StudyAttr.ABLATION, self.record())
        covered: set[tuple[str, int]] = set()
        for trial in study.get_trials(deepcopy=False):
            lost = trial.state == TrialState.FAIL and (
                trial.user_attrs.get(Attr.STOP_REASON) in RETRYABLE_REASONS
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
                        user_attrs={Attr.ARM: arm.name, Attr.SEED: seed},
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
