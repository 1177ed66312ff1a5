"""ASHA that remembers which trials it stopped early, so they can be recorded as PRUNED."""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler


class RecordingASHA(ASHAScheduler):
    """Ray's ASHA, unchanged in its decisions; it only notes the trials it cut short.

    Telling an ASHA stop apart from the end of the budget or an interrupted run is what lets
    the searcher write PRUNED only for trials that ASHA really pruned.
    """

    def __init__(self, *, stopped_early: set[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stopped_early = stopped_early

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get("replay"):
            return TrialScheduler.CONTINUE  # already recorded in its rungs by the first attempt
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and result.get(self._time_attr, 0) < self._max_t:
            self.stopped_early.add(trial.trial_id)
        return decision
