"""A Ray Tune searcher that keeps an Optuna study in SQL storage honest.

Ray's stock ``OptunaSearch`` records trials that ASHA stops as COMPLETE with their partial
value, drops the result that triggered the stop, and leaves NaN trials RUNNING (DESIGN.md).
This searcher runs in the Ray driver, the only process that writes the study, and records:

* COMPLETE: the trial reached ``max_epochs``; its value is the last epoch's metric;
* PRUNED: ASHA stopped it earlier; every epoch it ran is an intermediate value, including
  the one that triggered the stop (Ray hands that one only to ``on_trial_complete``);
* FAIL: it raised (reason ``nan@epoch N``, ``oom``, ``exception:Type``...) or was
  interrupted; nothing is left RUNNING once :meth:`close` has run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from search.failures import error_text, failure_reason
from search.faults import Fault
from spaces import Space

CHECKPOINT_FOLDER = "trial_{number:05d}"


@dataclass
class _LiveTrial:
    trial: optuna.Trial
    ray_trial_id: str
    checkpoint_dir: Path
    started: float = field(default_factory=time.monotonic)
    epochs_done: int = 0
    last_value: float | None = None
    device: str | None = None


@dataclass(frozen=True)
class SearchProgress:
    """Counts for this run of the driver, plus the best finished value so far."""

    complete: int
    pruned: int
    failed: int
    running: int
    epochs_done: int
    best_value: float | None
    best_number: int | None

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed


class StudySearcher(Searcher):
    def __init__(
        self,
        study: optuna.Study,
        space: Space,
        trial_defaults: dict[str, Any],
        *,
        metric: str,
        mode: str,
        max_epochs: int,
        checkpoint_root: Path,
        asha_stopped: set[str],
        cpu_threads: int = 1,
        pretrained_paths: dict[str, str] | None = None,
        faults: dict[int, Fault] | None = None,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self.study = study
        self.space = space
        self.trial_defaults = dict(trial_defaults)
        self.max_epochs = max_epochs
        self.checkpoint_root = checkpoint_root
        self.asha_stopped = asha_stopped
        self.cpu_threads = cpu_threads
        self.pretrained_paths = dict(pretrained_paths or {})
        self.faults = dict(faults or {})
        self._live: dict[str, _LiveTrial] = {}
        self._awaiting_error: dict[str, _LiveTrial] = {}
        self._counts = {TrialState.COMPLETE: 0, TrialState.PRUNED: 0, TrialState.FAIL: 0}
        self._epochs_done = 0
        self._best: tuple[float, int] | None = None

    # Ray Tune's Searcher interface -------------------------------------------------------

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        trial = self.study.ask()
        params = self.space.sample(trial)
        trial_config = {**self.trial_defaults, **params}
        reference = trial_config.get("pretrained")
        if reference in self.pretrained_paths:
            # The trial gets a file path; the study keeps the readable "study:NAME".
            trial.set_user_attr("pretrained_from", reference)
            trial_config["pretrained"] = self.pretrained_paths[reference]
        checkpoint_dir = self.checkpoint_root / CHECKPOINT_FOLDER.format(number=trial.number)
        trial.set_user_attr("ray_trial_id", trial_id)
        trial.set_user_attr("checkpoint", str(checkpoint_dir))
        trial.set_user_attr("config", trial_config)
        self._live[trial_id] = _LiveTrial(trial, trial_id, checkpoint_dir)
        fault = self.faults.get(trial.number)
        return {
            "trial": trial_config,
            "checkpoint_dir": str(checkpoint_dir),
            "cpu_threads": self.cpu_threads,
            "study_trial_number": trial.number,
            "fault": fault.as_config() if fault else None,
        }

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        live = self._live.get(trial_id)
        if live is not None:
            self._record_epoch(live, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        live = self._live.pop(trial_id, None)
        if live is None:
            return
        if error:
            # Ray calls this before the callbacks that carry the exception; wait for it.
            self._awaiting_error[trial_id] = live
            return
        if result:
            self._record_epoch(live, result)
        if live.epochs_done >= self.max_epochs and live.last_value is not None:
            self._finish(live, TrialState.COMPLETE, "completed", value=live.last_value)
        elif trial_id in self.asha_stopped and live.epochs_done > 0:
            self._finish(live, TrialState.PRUNED, "asha")
        else:
            live.trial.set_user_attr("error", "stopped before its epoch budget, not by ASHA")
            self._finish(live, TrialState.FAIL, "interrupted")

    # Called by the driver ----------------------------------------------------------------

    def record_failure(self, trial_id: str, error: BaseException | None) -> None:
        """Finish a trial that raised as FAIL, with its reason and error text."""
        live = self._awaiting_error.pop(trial_id, None) or self._live.pop(trial_id, None)
        if live is None:
            return
        live.trial.set_user_attr("error", error_text(error))
        self._finish(live, TrialState.FAIL, failure_reason(error))

    def close(self) -> None:
        """Fail whatever is still open so that no trial stays RUNNING after the driver ends."""
        for trial_id in list(self._awaiting_error):
            self.record_failure(trial_id, None)
        for live in list(self._live.values()):
            live.trial.set_user_attr("error", "the driver ended before this trial finished")
            self._finish(live, TrialState.FAIL, "interrupted")
        self._live.clear()

    def progress(self) -> SearchProgress:
        return SearchProgress(
            complete=self._counts[TrialState.COMPLETE],
            pruned=self._counts[TrialState.PRUNED],
            failed=self._counts[TrialState.FAIL],
            running=len(self._live),
            epochs_done=self._epochs_done,
            best_value=self._best[0] if self._best else None,
            best_number=self._best[1] if self._best else None,
        )

    # Internals ---------------------------------------------------------------------------

    def _record_epoch(self, live: _LiveTrial, result: dict[str, Any]) -> None:
        epoch = result.get("epoch")
        value = result.get(self.metric)
        if not isinstance(epoch, int) or epoch <= live.epochs_done or value is None:
            return  # a duplicate (Ray repeats the last result on completion) or no metric
        value = float(value)
        if not math.isfinite(value):
            return  # the trial raises NonFiniteMetricError; the failure records it
        live.trial.report(value, step=epoch)
        self._epochs_done += epoch - live.epochs_done
        live.epochs_done = epoch
        live.last_value = value
        live.device = result.get("device", live.device)

    def _finish(
        self, live: _LiveTrial, state: TrialState, reason: str, value: float | None = None
    ) -> None:
        trial = live.trial
        trial.set_user_attr("epochs_done", live.epochs_done)
        trial.set_user_attr("stop_reason", reason)
        trial.set_user_attr("wall_seconds", round(time.monotonic() - live.started, 3))
        if live.device is not None:
            trial.set_user_attr("device", live.device)
        self.study.tell(trial, value, state=state)
        self._counts[state] += 1
        if state == TrialState.COMPLETE and value is not None and self._is_better(value):
            self._best = (value, trial.number)

    def _is_better(self, value: float) -> bool:
        if self._best is None:
            return True
        return value > self._best[0] if self.mode == "max" else value < self._best[0]
