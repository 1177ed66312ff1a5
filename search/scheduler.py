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
from dataclasses import dataclass
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler


@dataclass(frozen=True)
class _RungKey:
    """What Ray's bracket reads of a trial: its id, here the study-trial key."""

    trial_id: str


def rung_key(number: int) -> str:
    return f"study-trial-{number}"


class StudyASHA(ASHAScheduler):
    """Ray's ASHA (one bracket) with rungs rebuilt from ``history`` and study-trial keys."""

    def __init__(
        self,
        *,
        stopped_early: set[str],
        keys: Mapping[str, str],
        history: Iterable[tuple[str, Mapping[int, float]]],
        direction: str,
        **kwargs: Any,
    ) -> None:
        # metric and mode come from Tune's config (set_search_properties); ``direction``
        # ("max"/"min") only signs the stored values, as Ray signs live ones.
        super().__init__(brackets=1, **kwargs)
        self.stopped_early = stopped_early
        self.keys = keys  # Ray trial id -> rung key, filled by the searcher
        sign = 1.0 if direction == "max" else -1.0
        for key, values in history:
            for milestone, recorded in self._rungs():
                if milestone in values and key not in recorded:
                    recorded[key] = sign * values[milestone]

    def _rungs(self) -> list[tuple[int, dict[str, float]]]:
        # Ray keeps the rungs private: [(milestone epoch, {trial id: signed value})], highest
        # milestone first. This is the one place that reaches into them.
        return self._brackets[0]._rungs

    def rungs(self) -> dict[int, dict[str, float]]:
        """Milestone epoch -> {rung key: value (signed: larger is better)}, lowest first."""
        return {milestone: dict(recorded) for milestone, recorded in reversed(self._rungs())}

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        metric, time_attr = self.metric, self._time_attr
        if time_attr not in result or metric not in result:
            return TrialScheduler.CONTINUE
        epoch = result[time_attr]
        if epoch >= self._max_t:
            return TrialScheduler.STOP  # the epoch budget: not an early stop
        key = _RungKey(self.keys.get(trial.trial_id, trial.trial_id))
        decision = self._brackets[0].on_result(key, epoch, self._metric_op * result[metric])
        if decision == TrialScheduler.STOP:
            self.stopped_early.add(trial.trial_id)
        return decision

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        # Ray records the final result in the rungs too; with study keys the record is
        # already there (or is added here, as it would be for any result).
        if self._time_attr in result and self.metric in result:
            key = _RungKey(self.keys.get(trial.trial_id, trial.trial_id))
            self._brackets[0].on_result(key, result[self._time_attr],
                                        self._metric_op * result[self.metric])  # fmt: skip
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
    retry_of = {t.number: t.user_attrs.get("retry_of") for t in trials}
    keys: dict[int, str] = {}
    for number in retry_of:
        root, seen = number, set()
        while retry_of.get(root) is not None and root not in seen:
            seen.add(root)
            root = retry_of[root]
        keys[number] = rung_key(root)
    return keys
