"""ASHA whose rungs come from the study, keyed by study trial, so that it decides the same way
whether a study runs straight through, resumes after a crash, or grows with ``--more``.

Ray's ASHA keeps its rungs (per milestone epoch, each trial's value when it got there) in
memory, keyed by Ray's trial id. A fresh driver would start with empty rungs, where the
first trial to reach a rung always continues, and a retried trial (a new Ray trial id) would
be recorded twice in one rung and judged at whatever epoch it reported first after its
replay. Here:

* every rung is rebuilt from the study's stored per-epoch values when a run starts, in the
  order the trials were started (trial number);
* a trial's rung key is its study trial (a retry of a lost trial shares the key of the trial
  it retries), so a retry inherits its first attempt's rung records;
* replayed epochs go through the rungs like live ones: a rung the trial already holds is
  skipped, one it does not is recorded and decided at its own epoch. A trial is therefore
  decided only at rung epochs.

The decisions themselves are Ray's (``_Bracket.on_result``: stop when the value is below the
``1 - 1/reduction_factor`` quantile of the rung); it also notes the trials it stopped early,
so that the searcher records them as PRUNED.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from search.keys import Attr


@dataclass(frozen=True)
class _RungKey:
    """What Ray's bracket reads of a trial: its id, here the study-trial key."""

    trial_id: str


def rung_key(number: int) -> str:
    return f"study-trial-{number}"


@dataclass
class RungLedger:
    """What the searcher and ASHA share about the running trials: the rung key each Ray
    trial reports under (the study trial it runs, or the root of its ``retry_of`` chain) and
    the Ray trials ASHA stopped early (the searcher records those as PRUNED)."""

    trial_keys: dict[int, str] = field(default_factory=dict)  # study trial -> rung key
    ray_keys: dict[str, str] = field(default_factory=dict)  # Ray trial id -> rung key
    stopped_early: set[str] = field(default_factory=set)

    @classmethod
    def of_study(cls, trials: Iterable[Any]) -> RungLedger:
        return cls(trial_keys=rung_keys_of(trials))

    def start(self, ray_trial_id: str, number: int, retry_of: int | None = None) -> None:
        """Ray trial ``ray_trial_id`` runs study trial ``number`` (a retry of ``retry_of``)."""
        if number not in self.trial_keys:
            root = self.trial_keys.get(retry_of) if retry_of is not None else None
            self.trial_keys[number] = root or rung_key(number)
        self.ray_keys[ray_trial_id] = self.trial_keys[number]

    def key_of(self, ray_trial_id: str) -> str:
        return self.ray_keys.get(ray_trial_id, ray_trial_id)


class StudyASHA(ASHAScheduler):
    """Ray's ASHA (one bracket) with rungs rebuilt from the study and study-trial keys."""

    def __init__(
        self,
        *,
        ledger: RungLedger,
        history: Iterable[tuple[str, Mapping[int, float]]],
        direction: str,
        max_epochs: int,
        grace_period: int,
        reduction_factor: float,
        epoch_attr: str = "epoch",
    ) -> None:
        # metric and mode come from Tune's config (set_search_properties); ``direction``
        # ("max"/"min") signs values as Ray signs them: larger is better in every rung.
        super().__init__(
            time_attr=epoch_attr,
            max_t=max_epochs,
            grace_period=grace_period,
            reduction_factor=reduction_factor,
            brackets=1,
        )
        self.ledger = ledger
        self.epoch_attr = epoch_attr
        self.max_epochs = max_epochs
        self.sign = 1.0 if direction == "max" else -1.0
        for key, values in history:
            for milestone, recorded in self._rungs():
                if milestone in values and key not in recorded:
                    recorded[key] = self.sign * values[milestone]

    # Ray exposes no API for a bracket's rungs or for recording a result under a key of our
    # own; these two methods are the only places that reach into its private state
    # (``_brackets``, ``_Bracket._rungs``, ``_trial_info``, Ray 2.58-2.60).
    def _rungs(self) -> list[tuple[int, dict[str, float]]]:
        """[(milestone epoch, {rung key: signed value})], highest milestone first."""
        return self._brackets[0]._rungs

    def _record(self, trial_id: str, epoch: int, value: float) -> str:
        key = _RungKey(self.ledger.key_of(trial_id))
        return self._brackets[0].on_result(key, epoch, self.sign * value)

    def rungs(self) -> dict[int, dict[str, float]]:
        """Milestone epoch -> {rung key: value (signed: larger is better)}, lowest first."""
        return {milestone: dict(recorded) for milestone, recorded in reversed(self._rungs())}

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if self.epoch_attr not in result or self.metric not in result:
            return TrialScheduler.CONTINUE
        epoch = result[self.epoch_attr]
        if epoch >= self.max_epochs:
            return TrialScheduler.STOP  # the epoch budget: not an early stop
        decision = self._record(trial.trial_id, epoch, result[self.metric])
        if decision == TrialScheduler.STOP:
            self.ledger.stopped_early.add(trial.trial_id)
        return decision

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        # Ray records the final result in the rungs too; with study keys the record is
        # already there (or is added here, as it would be for any result).
        if self.epoch_attr in result and self.metric in result:
            self._record(trial.trial_id, result[self.epoch_attr], result[self.metric])
        self._trial_info.pop(trial.trial_id, None)


def study_history(trials: Iterable[Any], key_of: Mapping[int, str]) -> list[tuple[str, dict]]:
    """(rung key, {epoch: value}) for every trial of the study that stored epochs, in the
    order the trials were started."""
    return [
        (key_of[trial.number], dict(trial.intermediate_values))
        for trial in sorted(trials, key=lambda t: t.number)
        if trial.intermediate_values
    ]


def rung_keys_of(trials: Iterable[Any]) -> dict[int, str]:
    """Trial number -> rung key: its own, or that of the trial its ``retry_of`` chain starts
    from (a retry continues the same training, so it shares the rung records)."""
    retry_of = {t.number: t.user_attrs.get(Attr.RETRY_OF) for t in trials}
    keys: dict[int, str] = {}
    for number in retry_of:
        root, seen = number, set()
        while retry_of.get(root) is not None and root not in seen:
            seen.add(root)
            root = retry_of[root]
        keys[number] = rung_key(root)
    return keys
