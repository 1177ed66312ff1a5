"""What a run is for and when it gives up: the searcher's policy, set once by the driver."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# This many trials in a row failing with the same reason stop the run (a full disk, a broken
# install, a missing file: every further trial would fail the same way).
SAME_FAILURE_LIMIT = 3


@dataclass(frozen=True)
class RunPolicy:
    """The objective, the epoch budget of a trial, the run's trial budget and failure limits.

    ``target_finished`` counts finished (COMPLETE + PRUNED) trials of the whole study,
    ``finished_before`` of them already there when the run started; failures never use up
    the budget. ``max_failed_trials`` failures in this run, or ``same_failure_limit`` in a row
    with the same cause, stop it. A trial whose worker process died is rerun (as the same
    trial) up to ``max_worker_failures`` times.
    """

    metric: str
    mode: Literal["max", "min"]
    max_epochs: int
    target_finished: int
    finished_before: int = 0
    max_failed_trials: int | None = None
    max_worker_failures: int = 0
    same_failure_limit: int = SAME_FAILURE_LIMIT

    def is_better(self, value: float, than: float) -> bool:
        return value > than if self.mode == "max" else value < than
