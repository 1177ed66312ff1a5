"""What the search figures show, computed from a study's columns (no plotting here).

Importance and parallel coordinates are computed at the first rung: the latest epoch that
every finished trial reached (the "rung view"). With ASHA most trials are PRUNED, and
Optuna's importance functions only look at COMPLETE trials, which would leave a handful of
points; a later epoch would only hold the trials ASHA let through, a sample already filtered
on the metric, which understates parameters (such as ``lr``) whose bad values were pruned.
"""

from __future__ import annotations

import copy
import heapq
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.storages import InMemoryStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.keys import Attr
from search.store import MISSING, TrialColumns

FINISHED = ("COMPLETE", "PRUNED")
# Up to this many trials, every learning curve is drawn; above it, quantile bands per state
# and the best trials' curves (10,000 curves are a solid block, and an 11 MB page).
ALL_CURVES_UP_TO = 200
BAND_QUANTILES = (0.1, 0.5, 0.9)


def rung_epoch(columns: TrialColumns) -> int | None:
    """The latest epoch every finished trial reached (at least 2 trials): ASHA has filtered
    nothing there yet."""
    finished = np.isin(columns.state[columns.curve_row], FINISHED)
    rows = columns.curve_row[finished]
    if len(np.unique(rows)) < 2:
        return None
    last = np.zeros(len(columns), dtype=np.int64)
    np.maximum.at(last, rows, columns.curve_step[finished])
    return int(last[np.unique(rows)].min())


def rung_values(columns: TrialColumns, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the finished trials that reached ``epoch``, and their values there."""
    at = (columns.curve_step == epoch) & np.isin(columns.state[columns.curve_row], FINISHED)
    return columns.curve_row[at], columns.curve_value[at]


def rung_view(columns: TrialColumns, epoch: int) -> optuna.Study:
    """An in-memory study of the trials that reached ``epoch``, valued there (what Optuna's
    importance evaluators read)."""
    rows, values = rung_values(columns, epoch)
    named = list(columns.params.items())
    trials = []
    for index, (row, value) in enumerate(zip(rows, values, strict=True)):
        # Parameters as stored: Optuna checked each against its distribution when the trial
        # set it, so ``create_trial``'s checks (a third of a second at 10,000 trials) would
        # only repeat that.
        params = {name: column[row] for name, column in named if column[row] is not MISSING}
        distributions = {name: columns.distributions[name] for name in params}
        trials.append(_complete(index, params, distributions, float(value)))
    return optuna.load_study(
        study_name=VIEW_NAME, storage=_GivenTrialsStorage(trials, columns.direction)
    )


def _complete(
    index: int, params: dict[str, Any], distributions: dict[str, Any], value: float
) -> FrozenTrial:
    """A COMPLETE trial numbered ``index``, with ``index`` as its id too (PED-ANOVA tells
    trials apart by id)."""
    return FrozenTrial(
        number=index,
        trial_id=index,
        state=TrialState.COMPLETE,
        value=value,
        datetime_start=None,
        datetime_complete=None,
        params=params,
        distributions=distributions,
        user_attrs={},
        system_attrs={},
        intermediate_values={},
    )


class _GivenTrialsStorage(InMemoryStorage):
    """One study whose trials are the given ``FrozenTrial`` objects, shared, not copied.

    Optuna's own in-memory storage deep-copies every trial added (about 0.1 ms a trial: a
    second for 10,000), and an importance bootstrap builds dozens of such studies. Storages
    are Optuna's extension point; only reads are served here (the study is a view)."""

    def __init__(self, trials: list[FrozenTrial], direction: str) -> None:
        super().__init__()
        self.create_new_study([StudyDirection[direction.upper()]], VIEW_NAME)
        self._given = trials

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        trials = self._given if states is None else [t for t in self._given if t.state in states]
        return copy.deepcopy(trials) if deepcopy else list(trials)

    def get_n_trials(
        self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None
    ) -> int:
        if state is None:
            return len(self._given)
        states = (state,) if isinstance(state, TrialState) else state
        return sum(t.state in states for t in self._given)


VIEW_NAME = "view"


def trials_study(trials: list[FrozenTrial], direction: str) -> optuna.Study:
    """A read-only in-memory study of ``trials`` (COMPLETE, single-objective), renumbered in
    order: each gets its own number and id, so a trial given twice (a bootstrap resample) is
    two trials. The new trials share the given ones' parameter and distribution dictionaries,
    which nothing here changes."""
    numbered = [
        _complete(index, trial.params, trial.distributions, float(trial.value))
        for index, trial in enumerate(trials)
    ]
    return optuna.load_study(study_name=VIEW_NAME, storage=_GivenTrialsStorage(numbered, direction))


@dataclass(frozen=True)
class History:
    """COMPLETE trials by number, and the best value so far after each."""

    numbers: np.ndarray
    values: np.ndarray
    best_so_far: np.ndarray


def history(columns: TrialColumns) -> History:
    rows = columns.rows_in("COMPLETE")
    values = columns.value[rows]
    keep = np.isfinite(values)
    rows, values = rows[keep], values[keep]
    accumulate = np.maximum if columns.direction == "maximize" else np.minimum
    best = accumulate.accumulate(values) if len(values) else values
    return History(columns.number[rows], values, best)


@dataclass(frozen=True)
class Band:
    """Per epoch, quantiles of the curves of one state's trials that reached it."""

    state: str
    trials: int
    epochs: np.ndarray
    quantiles: dict[float, np.ndarray]
    counts: np.ndarray  # trials that reached each epoch


def curve_bands(
    columns: TrialColumns, quantiles: tuple[float, ...] = BAND_QUANTILES, by_state: bool = True
) -> list[Band]:
    """One band per final state, or (``by_state=False``) one over the finished trials,
    labelled "finished"."""
    states = columns.state[columns.curve_row]
    if by_state:
        groups = [(str(state), states == state) for state in dict.fromkeys(columns.state)]
    else:
        groups = [("finished", np.isin(states, FINISHED))]
    bands = []
    for label, mine in groups:
        if not mine.any():
            continue
        steps, values = columns.curve_step[mine], columns.curve_value[mine]
        epochs = np.unique(steps)
        per_epoch = [values[steps == epoch] for epoch in epochs]
        bands.append(
            Band(
                state=label,
                trials=len(np.unique(columns.curve_row[mine])),
                epochs=epochs,
                quantiles={
                    q: np.array([np.nanquantile(v, q) for v in per_epoch]) for q in quantiles
                },
                counts=np.array([len(v) for v in per_epoch]),
            )
        )
    return bands


def best_rows(columns: TrialColumns, limit: int = 10) -> np.ndarray:
    """Rows of the COMPLETE trials with a finite value, best first."""
    rows = columns.rows_in("COMPLETE")
    rows = rows[np.isfinite(columns.value[rows])]
    sign = -1.0 if columns.direction == "maximize" else 1.0
    return rows[np.lexsort((columns.number[rows], sign * columns.value[rows]))][:limit]


def best_trials(columns: TrialColumns, limit: int = 10) -> list[dict[str, Any]]:
    """COMPLETE trials, best first, as table rows (number, value, epochs, seconds, params)."""

    def attr(key: str, row: int) -> Any:
        column = columns.user_attrs.get(key)
        return None if column is None else column[row]

    return [
        {
            "number": int(columns.number[row]),
            "value": float(columns.value[row]),
            "epochs": attr(Attr.EPOCHS_DONE, row),
            "seconds": attr(Attr.WALL_SECONDS, row),
            "params": {
                name: column[row]
                for name, column in columns.params.items()
                if column[row] is not MISSING
            },
        }
        for row in best_rows(columns, limit)
    ]


@dataclass(frozen=True)
class Compute:
    """Where device time went: per final state, and what ASHA saved by stopping trials early.

    The saving counts each PRUNED trial's remaining epochs at its own average seconds per
    epoch. A trial's first epoch carries one-time costs (``torch.compile``, cuDNN's autotuning,
    moving the data to the device), so for trials stopped after one epoch this is an upper
    bound."""

    seconds_by_state: dict[str, float]
    trials_by_state: dict[str, int]
    timed_by_state: dict[str, int]  # trials that recorded their device time
    saved_seconds: float
    max_epochs: int | None  # None: the study did not prune (no saving to count)

    @property
    def spent_seconds(self) -> float:
        return sum(self.seconds_by_state.values())

    @property
    def finished_seconds(self) -> float:
        return sum(self.seconds_by_state.get(state, 0.0) for state in FINISHED)

    @property
    def saved_fraction(self) -> float:
        """Of what the finished trials would have taken had each run ``max_epochs``."""
        whole = self.finished_seconds + self.saved_seconds
        return self.saved_seconds / whole if whole else 0.0


def compute(columns: TrialColumns, max_epochs: int | None) -> Compute:
    """Device seconds (``train_seconds``: training and validation, no start-up) per state."""
    seconds = _numeric(columns, Attr.TRAIN_SECONDS)
    epochs = _numeric(columns, Attr.EPOCHS_DONE)
    by_state: dict[str, float] = {}
    counts: dict[str, int] = {}
    timed: dict[str, int] = {}
    for state in dict.fromkeys(columns.state):
        mine = columns.state == state
        by_state[str(state)] = float(np.nansum(seconds[mine]))
        counts[str(state)] = int(mine.sum())
        timed[str(state)] = int(np.isfinite(seconds[mine]).sum())
    saved = 0.0
    if max_epochs:
        pruned = (columns.state == "PRUNED") & (epochs > 0) & np.isfinite(seconds)
        per_epoch = seconds[pruned] / epochs[pruned]
        saved = float(np.sum(per_epoch * np.maximum(0, max_epochs - epochs[pruned])))
    return Compute(by_state, counts, timed, saved, max_epochs)


def _numeric(columns: TrialColumns, key: str) -> np.ndarray:
    column = columns.user_attrs.get(key)
    if column is None:
        return np.full(len(columns), np.nan)
    return np.array([float(v) if isinstance(v, int | float) else np.nan for v in column])


@dataclass(frozen=True)
class Timeline:
    """Trials laid out on worker slots over time, and how busy the slots were.

    Trials do not record which worker ran them, so each trial goes to the lowest slot free
    at its start (its ``datetime_start`` to ``datetime_complete``, or to ``now`` while it
    runs): the fewest slots that hold the trials as they ran. Utilisation counts only the
    time during which at least one trial ran, so the hours a search was stopped between
    resumes do not count as idle."""

    rows: np.ndarray  # rows of the trials laid out (those with a start time)
    slot: np.ndarray  # the slot of each
    start_s: np.ndarray  # seconds since the first trial's start
    end_s: np.ndarray
    origin: np.datetime64 | None  # the first trial's start (naive UTC)
    slots: int  # slots used, or the configured ``max_concurrent`` where it is larger
    active_s: float  # seconds with at least one trial running
    busy_s: float  # trial-seconds

    @property
    def utilisation(self) -> float:
        capacity = self.slots * self.active_s
        return self.busy_s / capacity if capacity else 0.0


def timeline(
    columns: TrialColumns, now: np.datetime64, configured_slots: int | None = None
) -> Timeline:
    started = ~np.isnat(columns.datetime_start)
    rows = np.flatnonzero(started)
    start = columns.datetime_start[rows]
    # A trial that ended without an end time (a crashed driver's, before recovery) counts
    # up to now, as a running one does.
    end = np.where(np.isnat(columns.datetime_complete[rows]), now, columns.datetime_complete[rows])
    end = np.maximum(end, start)
    if not len(rows):
        empty = np.empty(0)
        return Timeline(rows, rows, empty, empty, None, configured_slots or 0, 0.0, 0.0)
    origin = start.min()
    start_s = (start - origin) / np.timedelta64(1, "s")
    end_s = (end - origin) / np.timedelta64(1, "s")
    order = np.lexsort((rows, start_s))
    slot = np.empty(len(rows), dtype=np.int64)
    running: list[tuple[float, int]] = []  # (end, slot) of the trials in flight
    free: list[int] = []  # slots free now, lowest first
    used = 0
    for index in order:
        while running and running[0][0] <= start_s[index]:
            heapq.heappush(free, heapq.heappop(running)[1])
        if free:
            slot[index] = heapq.heappop(free)
        else:
            slot[index] = used
            used += 1
        heapq.heappush(running, (float(end_s[index]), int(slot[index])))
    return Timeline(
        rows=rows,
        slot=slot,
        start_s=start_s,
        end_s=end_s,
        origin=origin,
        slots=max(used, configured_slots or 0),
        active_s=_union_length(start_s[order], end_s[order]),
        busy_s=float(np.sum(end_s - start_s)),
    )


def _union_length(starts: np.ndarray, ends: np.ndarray) -> float:
    """The length of the union of intervals sorted by start: each run of overlapping
    intervals is one block, from its first start to its latest end."""
    if not len(starts):
        return 0.0
    reach_before = np.concatenate([[-np.inf], np.maximum.accumulate(ends)[:-1]])
    first = np.flatnonzero(starts > reach_before)
    return float(np.sum(np.maximum.reduceat(ends, first) - starts[first]))


def busy_over_time(data: Timeline, bins: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Bin centres (seconds since the first start) and the mean number of trials running in
    each bin: the exact integral of the running count over the bin, divided by its width."""
    if not len(data.rows):
        return np.empty(0), np.empty(0)
    times = np.concatenate([data.start_s, data.end_s])
    steps = np.concatenate([np.ones(len(data.rows)), -np.ones(len(data.rows))])
    order = np.argsort(times, kind="stable")
    times, running = times[order], np.cumsum(steps[order])
    # The integral of the running count, at each event time (piecewise linear in between).
    area = np.concatenate([[0.0], np.cumsum(running[:-1] * np.diff(times))])
    edges = np.linspace(times[0], times[-1], bins + 1)
    width = np.diff(edges)
    if not width.any():
        return edges[:1], np.array([float(len(data.rows))])
    mean = np.diff(np.interp(edges, times, area)) / width
    return (edges[:-1] + edges[1:]) / 2, mean
