"""What the search figures show, computed from a study's columns (no plotting here).

Importance and parallel coordinates are computed at the first rung: the latest epoch that
every finished trial reached (the "rung view"). With ASHA most trials are PRUNED, and
Optuna's importance functions only look at COMPLETE trials, which would leave a handful of
points; a later epoch would only hold the trials ASHA let through, a sample already filtered
on the metric, which understates parameters (such as ``lr``) whose bad values were pruned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

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
    view = optuna.create_study(direction=columns.direction)
    rows, values = rung_values(columns, epoch)
    trials = []
    for row, value in zip(rows, values, strict=True):
        params = {
            name: column[row]
            for name, column in columns.params.items()
            if column[row] is not MISSING
        }
        trials.append(
            optuna.trial.create_trial(
                params=params,
                distributions={name: columns.distributions[name] for name in params},
                value=float(value),
            )
        )
    view.add_trials(trials)
    return view


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


def curve_bands(columns: TrialColumns, quantiles: tuple[float, ...] = BAND_QUANTILES) -> list[Band]:
    bands = []
    states = columns.state[columns.curve_row]
    for state in dict.fromkeys(columns.state):
        mine = states == state
        if not mine.any():
            continue
        steps, values = columns.curve_step[mine], columns.curve_value[mine]
        epochs = np.unique(steps)
        per_epoch = [values[steps == epoch] for epoch in epochs]
        bands.append(
            Band(
                state=str(state),
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
