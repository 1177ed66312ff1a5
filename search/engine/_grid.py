"""``sampler: grid``: every active combination of the space's values, queued as trials.

Optuna's GridSampler takes the full product of its axes, so a conditional parameter (SGD's
momentum) multiplies configurations where it does not exist and the same trial trains
several times; and it calls ``study.stop()`` when done, which raises outside ``optimize``.
Instead the active combinations (:meth:`spaces.Space.grid_points`) are queued with
``enqueue_trial`` like an ablation's cells: a point that any trial of the study already
covers is not queued again, across reruns and crashes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from search.keys import RETRYABLE_REASONS, Attr


def _canonical(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


@dataclass
class GridPlan:
    """Queues grid points, up to ``target`` finished trials in the study."""

    points: list[dict[str, Any]]
    target: int

    def check(self, study: optuna.Study) -> None:
        """Nothing to compare: a changed space is refused by the study's own check."""

    def describe(self, params: dict[str, Any]) -> dict[str, Any]:
        return {}

    def _covered(self, study: optuna.Study) -> set[str]:
        covered = set()
        for trial in study.get_trials(deepcopy=False):
            lost = trial.state == TrialState.FAIL and (
                trial.user_attrs.get(Attr.STOP_REASON) in RETRYABLE_REASONS
            )
            if lost:
                continue  # its retry (queued by the lease holder) covers the point
            params = dict(trial.params) or dict(trial.system_attrs.get("fixed_params", {}))
            covered.add(_canonical(params))
        return covered

    def remaining(self, study: optuna.Study) -> list[dict[str, Any]]:
        covered = self._covered(study)
        return [point for point in self.points if _canonical(point) not in covered]

    def enqueue_missing(self, study: optuna.Study) -> int:
        finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                                 TrialState.PRUNED)))  # fmt: skip
        waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        room = max(0, self.target - finished - waiting)
        todo = self.remaining(study)[:room]
        for point in todo:
            study.enqueue_trial(point, skip_if_exists=False)
        return len(todo)
