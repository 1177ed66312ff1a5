"""Continuing a study from its database: compatibility, lost trials, forks.

The SQL study is the source of truth (Tune's experiment folder lags it: ``Tuner.restore`` after a
SIGTERM fails with ``UpdateFinishedTrialError`` on Ray 2.58). On every start the driver, holding the
study's lease, turns trials that a dead driver left RUNNING into FAIL (``driver_lost``) and queues
their parameters again, first in line, with ``retry_of``; the retry continues from the lost trial's
checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from model import CHECKPOINT_NAME
from model.checkpoint import PREVIOUS_NAME
from search.errors import IncompatibleStudyError
from search.keys import RETRYABLE_REASONS, Attr, Reason, StudyAttr
from search.store import copy_files, delete_files
from spaces import Space

# Changing these makes old and new trials incomparable; the rest (budget, sampler,
# concurrency, resources, ASHA's grace and rate) may change between runs.
# The data set counts by what makes results comparable (its name and split), not by where it
# lives or how it is checked (data_dir, download, verify may change).
COMPARED_FIELDS = (
    "dataset.name",
    "dataset.val_fraction",
    "dataset.split_seed",
    "space",
    "fixed",
    "objective",
    "asha.max_epochs",
)
FORK_DROPPED = (Attr.RETRY_OF, Attr.WORKER_FAILURES)


def _get(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part, {}) if isinstance(data, dict) else {}
    return data


def _diff(old: Any, new: Any, path: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        lines = []
        for key in sorted(set(old) | set(new), key=str):
            lines += _diff(old.get(key, "<absent>"), new.get(key, "<absent>"), f"{path}.{key}")
        return lines
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Field-by-field differences that forbid continuing the stored study."""
    lines: list[str] = []
    for field in COMPARED_FIELDS:
        lines += _diff(_get(stored, field), _get(current, field), field)
    return lines


def check_compatible(study: optuna.Study, current: dict[str, Any]) -> None:
    stored = study.user_attrs.get(StudyAttr.STUDY_FILE)
    if not stored:
        return
    lines = differences(stored, current)
    if lines:
        shown = "\n  ".join(lines[:12])
        raise IncompatibleStudyError(
            f"study {study.study_name!r} already exists with a different set-up:\n  {shown}\n"
            f"Run it with its original study file, or start a new study that reuses the "
            f"finished trials that fit: resnet-hpo run STUDY.yaml --fork NEW_NAME"
        )


def _retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Trials whose retry exists and still counts: queued, running, finished, or failed after
    it reached a worker (a retry lost before that leaves its original to be retried)."""
    return {
        t.user_attrs[Attr.RETRY_OF]
        for t in trials
        if Attr.RETRY_OF in t.user_attrs
        and (t.state != TrialState.FAIL or Attr.CONFIG in t.user_attrs)
    }


def recover_lost_trials(study: optuna.Study) -> list[int]:
    """FAIL every RUNNING trial (its driver is dead: we hold the lease) and queue retries of
    those and of trials interrupted earlier. Returns the numbers queued for retry.

    A trial lost before it was handed to a worker (no ``config`` attribute yet: its
    parameters may be incomplete) trained nothing; it is not retried, and the budget of
    finished trials brings a new one instead."""
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial = _running(study, frozen)
        trial.set_user_attr(Attr.STOP_REASON, Reason.DRIVER_LOST)
        trial.set_user_attr(
            Attr.ERROR, "the driver running this trial stopped without finishing it"
        )
        study.tell(trial, state=TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    retried = _retried_numbers(trials)
    queued = []
    for trial in trials:
        reason = trial.user_attrs.get(Attr.STOP_REASON)
        lost = trial.state == TrialState.FAIL and reason in RETRYABLE_REASONS
        started = Attr.CONFIG in trial.user_attrs
        if lost and started and trial.number not in retried:
            study.enqueue_trial(
                trial.params, user_attrs={Attr.RETRY_OF: trial.number}, skip_if_exists=False
            )
            queued.append(trial.number)
    return queued


def _running(study: optuna.Study, frozen: FrozenTrial) -> optuna.Trial:
    """A handle on a RUNNING trial another process asked for. Optuna has no public way from a
    trial number to its id (``FrozenTrial._trial_id`` is the only one, Optuna 4-5): this is
    the one place that reads it."""
    return optuna.Trial(study, frozen._trial_id)


CHECKPOINT_FILES = (CHECKPOINT_NAME, PREVIOUS_NAME)


def clear_checkpoints(folder: str) -> None:
    """Remove checkpoints left in a trial folder (a local path or a URL) by an earlier
    study of the same name."""
    delete_files(folder, CHECKPOINT_FILES)


def carry_checkpoint(source_dir: str, target_dir: str) -> bool:
    """Copy a lost trial's checkpoints into its retry's folder; False if there were none."""
    return copy_files(source_dir, target_dir, CHECKPOINT_FILES)


def _fits(space: Space, params: dict[str, Any]) -> bool:
    """Every parameter is in the space with a value it allows, and none it needs is missing."""
    distributions = space.distributions()
    for name, value in params.items():
        if name not in distributions:
            return False
        try:
            # Optuna's own membership test (bounds, step, choices) is private and has no
            # public twin; this is the one place that uses it.
            if not distributions[name]._contains(distributions[name].to_internal_repr(value)):
                return False
        except ValueError:
            return False
    return space.required_names(params) <= set(params)


# What a fork may change and still copy values: only the space (the old trials that fit the
# new space are then results of the same experiment).
VALUE_PRESERVING_FIELDS = ("space",)


@dataclass(frozen=True)
class ForkResult:
    source: str
    target: str
    copied: int  # finished trials copied with their values
    queued: int  # configurations queued to run again (the values were not comparable)
    incomparable: list[str]  # set-up differences that made the old values incomparable

    def message(self) -> str:
        if self.incomparable:
            shown = "; ".join(self.incomparable[:4])
            return (
                f"forked {self.source!r} into {self.target!r}: the set-up changed beyond the "
                f"space ({shown}), so its values are not comparable; copied none, and queued "
                f"{self.queued} of its configurations that fit the new space to run again"
            )
        return f"forked {self.copied} finished trials of {self.source!r} into {self.target!r}"


def fork_trials(source: optuna.Study, target: optuna.Study, space: Space) -> ForkResult:
    """Start ``target`` from the finished trials of ``source`` whose parameters fit ``space``:
    copied with their values when only the space changed between the two set-ups (they are
    results of the same experiment), else queued as configurations to run again."""
    stored = source.user_attrs.get(StudyAttr.STUDY_FILE) or {}
    current = target.user_attrs.get(StudyAttr.STUDY_FILE) or {}
    incomparable = [
        line
        for line in differences(stored, current)
        if not line.startswith(VALUE_PRESERVING_FIELDS)
    ]
    finished = source.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    fitting = [trial for trial in finished if _fits(space, dict(trial.params))]
    if incomparable:
        seen: list[dict[str, Any]] = []
        for trial in fitting:
            if trial.params not in seen:
                seen.append(dict(trial.params))
                target.enqueue_trial(
                    dict(trial.params), user_attrs={Attr.FORKED_FROM: _origin(source, trial)}
                )
        return ForkResult(source.study_name, target.study_name, 0, len(seen), incomparable)
    distributions = space.distributions()
    for trial in fitting:
        target.add_trial(
            optuna.trial.create_trial(
                state=trial.state,
                value=trial.value,
                params=dict(trial.params),
                distributions={k: distributions[k] for k in trial.params},
                intermediate_values=dict(trial.intermediate_values),
                user_attrs={
                    # Trial numbers of the old study would mean other trials here.
                    **{k: v for k, v in trial.user_attrs.items() if k not in FORK_DROPPED},
                    Attr.FORKED_FROM: _origin(source, trial),
                },
            )
        )
    return ForkResult(source.study_name, target.study_name, len(fitting), 0, [])


def _origin(source: optuna.Study, trial: FrozenTrial) -> str:
    return f"{source.study_name}#{trial.number}"
