"""An ablation study's table: its COMPLETE cells summarised per arm against the baseline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from search.ablation._stats import ArmRun, ArmSummary, summarise
from search.errors import UserError
from search.keys import Attr, StudyAttr

if TYPE_CHECKING:
    from search.ablation._path import PathStep


def ablation_runs(study: optuna.Study) -> list[ArmRun]:
    """COMPLETE trials as (arm, seed, value, seconds)."""
    return [
        ArmRun(
            arm=t.user_attrs[Attr.ARM],
            seed=int(t.user_attrs[Attr.SEED]),
            value=float(t.value),
            seconds=float(
                t.user_attrs.get(Attr.TRAIN_SECONDS, t.user_attrs.get(Attr.WALL_SECONDS, 0))
            ),
        )
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if Attr.ARM in t.user_attrs and t.value is not None
    ]


def missing_reasons(study: optuna.Study) -> dict[str, str]:
    """Why each arm lacks finished cells: its trials by state and failure reasons."""
    states: dict[str, dict[str, int]] = {}
    for trial in study.get_trials(deepcopy=False):
        arm = trial.user_attrs.get(Attr.ARM)
        if arm is None or trial.state == TrialState.COMPLETE:
            continue
        label = trial.state.name
        if trial.state == TrialState.FAIL:
            label = f"FAIL {trial.user_attrs.get(Attr.STOP_REASON, 'unknown')}"
        counts = states.setdefault(arm, {})
        counts[label] = counts.get(label, 0) + 1
    return {
        arm: "no finished cell: " + ", ".join(f"{n} {label}" for label, n in sorted(c.items()))
        for arm, c in states.items()
    }


def analyse(study: optuna.Study) -> list[ArmSummary]:
    info = study.user_attrs.get(StudyAttr.ABLATION)
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
    # design: path: its steps (None for the other designs and the path's fallback), and why
    # the path stopped before the target, if it did.
    path: list[PathStep] | None = None
    path_note: str | None = None

    @property
    def missing_arms(self) -> list[str]:
        return [row.arm for row in self.rows if row.n == 0]
