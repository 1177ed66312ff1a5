"""The live view of a running study, and the Ray callback that feeds failures to the searcher."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

import cloudpickle
from ray.tune import Callback

from search.engine._searcher import SearchProgress, StudySearcher


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def format_progress(
    progress: SearchProgress,
    total: int,
    elapsed: float,
    direction_word: str = "best",
    waiting: int = 0,
) -> str:
    """One status line: finished (COMPLETE + PRUNED, what the budget counts) out of the
    run's target, running (and of those, ``waiting`` to start: no actor yet, as the cluster's
    resources are taken or its actor is starting) and failed
    apart, best so far, epochs done, elapsed / ETA."""
    finished = progress.finished
    eta = _clock(elapsed / finished * max(0, total - finished)) if finished else "?"
    best = (
        f"{direction_word} {progress.best_value:.4f} (#{progress.best_number})"
        if progress.best_value is not None
        else f"{direction_word} -"
    )
    queued = f" ({waiting} waiting to start)" if waiting else ""
    return (
        f"[{finished}/{total}] running {progress.running}{queued} | complete {progress.complete} "
        f"pruned {progress.pruned} failed {progress.failed} | {best} | "
        f"epochs {progress.epochs_done} | elapsed {_clock(elapsed)} eta {eta}"
    )


class ProgressView(Callback):
    """Prints the status line: redrawn in place on a terminal, one line per change in logs."""

    def __init__(
        self,
        searcher: StudySearcher,
        total: int,
        stream: TextIO | None = None,
        interval_s: float = 1.0,
    ) -> None:
        self.searcher = searcher
        self.total = total
        self.stream = stream or sys.stdout
        self.interval_s = interval_s
        self.started = time.monotonic()
        self._last_counts: tuple[int, ...] = ()
        self._last_draw = 0.0
        self._last_print = 0.0
        self.log_heartbeat_s = 30.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._trials: list = []  # Tune's trials, as of its last step

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into the experiment folder; a stream does not pickle.
        return {**self.__dict__, "stream": None, "_trials": []}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.stream = sys.stdout

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < self.interval_s:
            return
        progress = self.searcher.progress()
        # Tune's PENDING: asked for, no actor yet (resources taken, or its actor starting).
        waiting = sum(trial.status == "PENDING" for trial in self._trials)
        line = format_progress(progress, self.total, now - self.started, waiting=waiting)
        self._last_draw = now
        counts = (progress.running, progress.complete, progress.pruned, progress.failed)
        if self._tty:
            self.stream.write("\r\x1b[2K" + line)
        elif counts != self._last_counts or now - self._last_print >= self.log_heartbeat_s:
            # Logs get a line when a trial starts or ends, and a heartbeat in between.
            self.stream.write(line + "\n")
            self._last_print = now
        else:
            return
        self._last_counts = counts
        self.stream.flush()

    def finish(self) -> None:
        self.draw(force=True)
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._trials = trials
        self.draw()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.draw(force=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.draw(force=True)


class FailureRecorder(Callback):
    """Hands each failed trial's exception to the searcher (Ray gives it only to callbacks)."""

    def __init__(self, searcher: StudySearcher) -> None:
        self.searcher = searcher

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.searcher.record_failure(trial.trial_id, _trial_exception(trial))


class UnreadableTrialError(RuntimeError):
    """Ray recorded a trial error that could not be read back; the message says why."""


def _trial_exception(trial: Any) -> BaseException | None:
    """The exception Ray recorded for the trial. A worker death is a ``RayActorError``,
    recognised by type; an error that cannot be read back becomes an
    :class:`UnreadableTrialError` carrying Ray's text trace and why it was unreadable.

    Tune pickles the exception into the trial's driver-side folder (in this driver's own Ray
    session directory, never under ``output_dir``) moments before it calls the callbacks;
    that copy is read first, since Ray's ``get_pickled_error`` reads the synced copy in the
    experiment storage, which may not be written yet."""
    try:
        error = _local_pickled_error(trial)
        if error is None:
            error = trial.get_pickled_error()
    except Exception as unreadable:  # noqa: BLE001 - recorded below, with the text trace
        return UnreadableTrialError(
            f"Ray's record of this trial's error could not be read ({unreadable!r}); "
            f"its text trace: {_text_trace(trial) or 'none'}"
        )
    if isinstance(error, BaseException):
        return error
    return UnreadableTrialError(
        f"Ray recorded no exception object; its text trace: {_text_trace(trial) or 'none'}"
    )


def _local_pickled_error(trial: Any) -> Any:
    path = getattr(trial, "pickled_error_file", None)
    if not path or not os.path.isfile(path):
        return None
    with open(path, "rb") as handle:
        return cloudpickle.load(handle)


def _text_trace(trial: Any) -> str:
    """Ray's text trace of the error: the driver-side file, else the synced copy."""
    try:
        path = getattr(trial, "error_file", None)
        if path and os.path.isfile(path):
            with open(path) as handle:
                return handle.read()[-4000:]
        return str(trial.get_error() or "")[-4000:]
    except Exception as error:  # noqa: BLE001 - what we can say instead
        return f"(unreadable: {error!r})"
