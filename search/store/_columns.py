"""Studies read in a few SQL queries, into columns: the read layer of listings and reports.

``optuna.load_study(...).get_trials()`` builds one ``FrozenTrial`` per trial, with its own
dictionaries of parameters, distributions, intermediate values and attributes: 2.8 s for a
10,000-trial study on a 2-core machine, and ``studies`` used to load every trial of every
study just to count them. Here a listing is a few aggregate queries, and a study's trials are
one query per table whose rows land in NumPy arrays.

The tables are Optuna's RDB schema (``studies``, ``study_directions``, ``trials``,
``trial_values``, ``trial_params``, ``trial_intermediate_values``,
``trial_user_attributes``; Optuna's schema ``v3.2.0.a``, unchanged from Optuna 3.2 through
5.0, the versions pyproject.toml allows). This module reads them (``_synthetic`` writes them,
for benchmarks only); ``tests/test_columns.py`` checks it against ``optuna.load_study`` on
SQLite and PostgreSQL.

A driver may write while this reads, and the queries do not share a snapshot: a trial
created after the ``trials`` query is left out of every later one (its rows are skipped), so
the result is the study as of that query plus later values of the trials it listed.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa
from optuna.distributions import BaseDistribution, json_to_distribution

from search.errors import StudyNotFoundError
from search.keys import Attr

# How Optuna stores a value that is not a finite float (SQLAlchemy Enum columns hold names).
_SPECIAL = {"INF_POS": math.inf, "INF_NEG": -math.inf, "NAN": math.nan}
MULTI_OBJECTIVE = "multi-objective"


class _Missing:
    """The value of a parameter a trial does not have (``None`` can be a categorical
    choice)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


@dataclass(frozen=True)
class StudySummary:
    """One study of a storage: trial counts by state and the best COMPLETE value."""

    name: str
    direction: str  # "maximize" | "minimize" | "multi-objective"
    counts: dict[str, int]  # only the states that occur
    best_value: float | None
    best_number: int | None
    device_seconds: float = 0.0  # training and validation time of the finished trials

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class TrialColumns:
    """A study's trials as columns, one row per trial in trial-number order.

    ``params[name][row]`` is the external value (:data:`MISSING` where the trial has no such
    parameter); the curves (intermediate values) are three aligned arrays, sorted by row and
    step; ``user_attrs[key][row]`` is the decoded JSON value, or None. Datetimes are naive
    UTC, as stored (Optuna's ``FrozenTrial`` shows them in local time).
    """

    study_name: str
    direction: str
    number: np.ndarray  # int64
    state: np.ndarray  # str (TrialState names)
    value: np.ndarray  # float64, NaN where the trial has no value
    datetime_start: np.ndarray  # datetime64[us], naive UTC; NaT where unset
    datetime_complete: np.ndarray
    params: dict[str, np.ndarray] = field(default_factory=dict)
    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    curve_row: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    curve_step: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    curve_value: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    user_attrs: dict[str, np.ndarray] = field(default_factory=dict)
    # Where these rows came from, for reading what changed since (``read_changes``).
    study_id: int = -1
    trial_id: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    attr_keys: tuple[str, ...] | None = None  # the user attributes read (None: all)

    def __len__(self) -> int:
        return len(self.number)

    def curve(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Steps and values of one trial's curve."""
        start, stop = np.searchsorted(self.curve_row, [row, row + 1])
        return self.curve_step[start:stop], self.curve_value[start:stop]

    def rows_in(self, *states: str) -> np.ndarray:
        return np.flatnonzero(np.isin(self.state, states))


def study_summaries(engine: sa.Engine) -> list[StudySummary]:
    """Every study with its counts by state and best value (as ``study.best_trial`` picks
    it; the earliest trial of a tie): aggregate queries only."""
    with engine.connect() as connection:
        studies = connection.execute(
            sa.text(
                "SELECT s.study_id, s.study_name, d.direction, n.objectives FROM studies s "
                "JOIN study_directions d ON d.study_id = s.study_id AND d.objective = 0 "
                "JOIN (SELECT study_id, COUNT(*) AS objectives FROM study_directions "
                "      GROUP BY study_id) n ON n.study_id = s.study_id"
            )
        ).all()
        counts: dict[int, dict[str, int]] = defaultdict(dict)
        for study_id, state, n in connection.execute(
            sa.text("SELECT study_id, state, COUNT(*) FROM trials GROUP BY study_id, state")
        ):
            counts[study_id][_name(state)] = int(n)
        best: dict[int, tuple[float, int]] = {}
        for direction in ("MAXIMIZE", "MINIMIZE"):
            best.update(_best_values(connection, direction))
        # Each finished trial records its device time as a JSON number (a trial whose end
        # could not be stored stays RUNNING with it: not counted until it is settled).
        device = dict(
            connection.execute(
                sa.text(
                    "SELECT t.study_id, SUM(CAST(a.value_json AS FLOAT)) "
                    "FROM trial_user_attributes a JOIN trials t ON t.trial_id = a.trial_id "
                    "WHERE a.key = :key AND t.state IN ('COMPLETE', 'PRUNED', 'FAIL') "
                    "GROUP BY t.study_id"
                ),
                {"key": Attr.TRAIN_SECONDS},
            ).all()
        )
    rows = []
    for study_id, name, direction, objectives in studies:
        # A multi-objective study has a Pareto front, not one best trial.
        found = best.get(study_id) if objectives == 1 else None
        rows.append(
            StudySummary(
                name=name,
                direction=_name(direction).lower() if objectives == 1 else MULTI_OBJECTIVE,
                counts=counts.get(study_id, {}),
                best_value=found[0] if found else None,
                best_number=found[1] if found else None,
                device_seconds=float(device.get(study_id) or 0.0),
            )
        )
    return sorted(rows, key=lambda row: row.name)


def _best_values(connection: sa.Connection, direction: str) -> dict[int, tuple[float, int]]:
    """study_id -> (best value, earliest trial holding it) over the COMPLETE trials of the
    studies of one direction. Infinite values count, as they do for Optuna's best_trial."""
    pick, infinite = ("MAX", "INF_POS") if direction == "MAXIMIZE" else ("MIN", "INF_NEG")
    # The best finite value per study is computed once (a grouped subquery), then joined.
    finite_best = (
        f"JOIN (SELECT t2.study_id AS sid, {pick}(v2.value) AS best FROM trials t2 "
        "      JOIN trial_values v2 ON v2.trial_id = t2.trial_id AND v2.objective = 0 "
        "      WHERE t2.state = 'COMPLETE' AND v2.value_type = 'FINITE' "
        "      GROUP BY t2.study_id) b ON b.sid = t.study_id "
    )
    of_direction = (
        "FROM trials t JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0 "
        "JOIN study_directions d ON d.study_id = t.study_id AND d.objective = 0 "
        "{join}WHERE t.state = 'COMPLETE' AND CAST(d.direction AS VARCHAR(16)) = :direction "
    )
    best: dict[int, tuple[float, int]] = {}
    for study_id, value, number in connection.execute(
        sa.text(
            "SELECT t.study_id, v.value, MIN(t.number) "
            + of_direction.format(join=finite_best)
            + "AND v.value_type = 'FINITE' AND v.value = b.best "
            "GROUP BY t.study_id, v.value"
        ),
        {"direction": direction},
    ):
        best[study_id] = (float(value), int(number))
    for study_id, number in connection.execute(
        sa.text(
            "SELECT t.study_id, MIN(t.number) "
            + of_direction.format(join="")
            + "AND CAST(v.value_type AS VARCHAR(16)) = :infinite GROUP BY t.study_id"
        ),
        {"direction": direction, "infinite": infinite},
    ):
        best[study_id] = (_SPECIAL[infinite], int(number))
    return best


def read_trials(
    engine: sa.Engine, study_name: str, attr_keys: tuple[str, ...] | None = None
) -> TrialColumns:
    """The trials of ``study_name`` in five queries; ``attr_keys`` limits the user
    attributes read (None: all of them)."""
    with engine.connect() as connection:
        study_id, direction = _find_study(connection, study_name)
        return _read_rows(connection, study_name, study_id, direction, attr_keys, None)


@dataclass(frozen=True)
class Changes:
    """The study now (``columns``), and the numbers of the trials read to get there: those
    created or still unfinished since the previous read (all of them after a full read)."""

    columns: TrialColumns
    changed: np.ndarray  # trial numbers, ascending
    full_read: bool


# Optuna never changes a finished trial (its storage refuses to), so only these can change.
OPEN_STATES = ("RUNNING", "WAITING")


def read_changes(engine: sa.Engine, previous: TrialColumns) -> Changes:
    """``previous`` brought up to date by reading only the trials that can have changed:
    those created since it was read and those it held unfinished (RUNNING, WAITING).

    Trial ids grow with creation and one driver writes a study, so "created since" is
    "id above the largest seen". After that read, a cheap check that this held: the trials
    with an id up to the largest seen are as many as the result holds (no trial with a lower
    id appeared: a second writer whose transaction committed late), and so are the finished
    ones, with the same latest start (a study deleted and created again under its name,
    whose new trials can reuse the old ids on SQLite). Where it fails, this reads everything.
    """
    with engine.connect() as connection:
        study_id, direction = _find_study(connection, previous.study_name)
        args = (connection, previous.study_name, study_id, direction, previous.attr_keys)
        if study_id == previous.study_id:
            last = int(previous.trial_id.max()) if len(previous) else -1
            unfinished = previous.trial_id[np.isin(previous.state, OPEN_STATES)]
            delta = _read_rows(*args, _Since(last, [int(t) for t in unfinished]))
            merged = _merge(previous, delta)
            if _same_trials_up_to(connection, study_id, last, merged):
                return Changes(merged, np.sort(delta.number), full_read=False)
        columns = _read_rows(*args, None)
        return Changes(columns, columns.number.copy(), full_read=True)


def _same_trials_up_to(
    connection: sa.Connection, study_id: int, last: int, columns: TrialColumns
) -> bool:
    """Whether the database's trials with ids up to ``last`` are the ones ``columns`` holds:
    as many, as many finished, and the same latest start among the finished."""
    open_states = ", ".join(f"'{state}'" for state in OPEN_STATES)
    total, finished, latest = connection.execute(
        sa.text(
            f"SELECT COUNT(*), SUM(CASE WHEN state IN ({open_states}) THEN 0 ELSE 1 END), "
            f"MAX(CASE WHEN state IN ({open_states}) THEN NULL ELSE datetime_start END) "
            "FROM trials WHERE study_id = :study AND trial_id <= :last"
        ),
        {"study": study_id, "last": last},
    ).one()
    held = columns.trial_id <= last
    done = held & ~np.isin(columns.state, OPEN_STATES)
    starts = columns.datetime_start[done]
    starts = starts[~np.isnat(starts)]
    expected = starts.max() if len(starts) else None
    found = None if latest is None else np.datetime64(latest, "us")
    return (
        int(total) == int(held.sum())
        and int(finished or 0) == int(done.sum())
        and (found == expected)
    )


@dataclass(frozen=True)
class _Since:
    """Trials with an id above ``last`` or among ``unfinished``."""

    last: int
    unfinished: list[int]


def _find_study(connection: sa.Connection, study_name: str) -> tuple[int, str]:
    found = connection.execute(
        sa.text(
            "SELECT s.study_id, d.direction, (SELECT COUNT(*) FROM study_directions n "
            "WHERE n.study_id = s.study_id) FROM studies s JOIN study_directions d "
            "ON d.study_id = s.study_id AND d.objective = 0 WHERE s.study_name = :name"
        ),
        {"name": study_name},
    ).first()
    if found is None:
        raise StudyNotFoundError(f"no study named {study_name!r} in this storage")
    study_id, direction, objectives = found
    # The values and curves are the first objective's.
    return int(study_id), _name(direction).lower() if objectives == 1 else MULTI_OBJECTIVE


class _Query:
    """The trials of one study (optionally only those of a ``_Since``): every query below
    joins ``trials t`` and filters with the same clause."""

    def __init__(self, study_id: int, since: _Since | None) -> None:
        self.where = "t.study_id = :study"
        self.parameters: dict[str, Any] = {"study": study_id}
        self.expanding: list[str] = []
        if since is not None:
            self.where += " AND (t.trial_id > :last OR t.trial_id IN :unfinished)"
            self.parameters.update(last=since.last, unfinished=since.unfinished)
            self.expanding.append("unfinished")

    def run(self, connection: sa.Connection, sql: str, **extra: Any) -> sa.CursorResult[Any]:
        statement = sa.text(sql.format(where=self.where))
        expanding = [*self.expanding, *(k for k, v in extra.items() if isinstance(v, list))]
        if expanding:
            statement = statement.bindparams(*(sa.bindparam(k, expanding=True) for k in expanding))
        return connection.execute(statement, {**self.parameters, **extra})


def _read_rows(
    connection: sa.Connection,
    study_name: str,
    study_id: int,
    direction: str,
    attr_keys: tuple[str, ...] | None,
    since: _Since | None,
) -> TrialColumns:
    query = _Query(study_id, since)
    trials = query.run(
        connection,
        "SELECT t.trial_id, t.number, t.state, t.datetime_start, t.datetime_complete "
        "FROM trials t WHERE {where} ORDER BY t.number",
    ).all()
    row_of = {trial_id: row for row, (trial_id, *_rest) in enumerate(trials)}
    value = np.full(len(trials), np.nan)
    for trial_id, stored, kind in query.run(
        connection,
        "SELECT v.trial_id, v.value, v.value_type FROM trial_values v "
        "JOIN trials t ON t.trial_id = v.trial_id WHERE {where} AND v.objective = 0",
    ):
        if trial_id in row_of:
            value[row_of[trial_id]] = _float(stored, kind)
    params, distributions = _params(connection, query, row_of, len(trials))
    curve_row, curve_step, curve_value = _curves(connection, query, row_of)
    user_attrs = _user_attrs(connection, query, row_of, len(trials), attr_keys)
    return TrialColumns(
        study_name=study_name,
        direction=direction,
        number=np.array([t[1] for t in trials], dtype=np.int64),
        state=np.array([_name(t[2]) for t in trials], dtype=str),
        value=value,
        datetime_start=_datetimes([t[3] for t in trials]),
        datetime_complete=_datetimes([t[4] for t in trials]),
        params=params,
        distributions=distributions,
        curve_row=curve_row,
        curve_step=curve_step,
        curve_value=curve_value,
        user_attrs=user_attrs,
        study_id=study_id,
        trial_id=np.array([t[0] for t in trials], dtype=np.int64),
        attr_keys=attr_keys,
    )


def _merge(old: TrialColumns, new: TrialColumns) -> TrialColumns:
    """``old`` with the rows of ``new`` added or, for trials both hold, replaced."""
    keep = np.flatnonzero(~np.isin(old.trial_id, new.trial_id))
    order = np.argsort(np.concatenate([old.number[keep], new.number]), kind="stable")
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    old_position = np.full(len(old), -1, dtype=np.int64)
    old_position[keep] = position[: len(keep)]
    new_position = position[len(keep) :]

    def stack(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.concatenate([a[keep], b])[order]

    def stack_columns(
        a: dict[str, np.ndarray], b: dict[str, np.ndarray], fill: Any
    ) -> dict[str, np.ndarray]:
        merged = {}
        for name in dict.fromkeys([*a, *b]):
            left = a.get(name, np.full(len(old), fill, dtype=object))
            right = b.get(name, np.full(len(new), fill, dtype=object))
            merged[name] = stack(left, right)
        return merged

    kept_curve = old_position[old.curve_row] >= 0
    curve_row = np.concatenate([old_position[old.curve_row[kept_curve]],
                                new_position[new.curve_row]])  # fmt: skip
    curve_step = np.concatenate([old.curve_step[kept_curve], new.curve_step])
    curve_value = np.concatenate([old.curve_value[kept_curve], new.curve_value])
    curve_order = np.lexsort((curve_step, curve_row))
    return TrialColumns(
        study_name=new.study_name,
        direction=new.direction,
        number=stack(old.number, new.number),
        state=stack(old.state, new.state),
        value=stack(old.value, new.value),
        datetime_start=stack(old.datetime_start, new.datetime_start),
        datetime_complete=stack(old.datetime_complete, new.datetime_complete),
        params=stack_columns(old.params, new.params, MISSING),
        distributions={**new.distributions, **old.distributions},
        curve_row=curve_row[curve_order],
        curve_step=curve_step[curve_order],
        curve_value=curve_value[curve_order],
        user_attrs=stack_columns(old.user_attrs, new.user_attrs, None),
        study_id=new.study_id,
        trial_id=stack(old.trial_id, new.trial_id),
        attr_keys=new.attr_keys,
    )


def _params(
    connection: sa.Connection, query: _Query, row_of: dict[int, int], n: int
) -> tuple[dict[str, np.ndarray], dict[str, BaseDistribution]]:
    params: dict[str, np.ndarray] = {}
    distributions: dict[str, BaseDistribution] = {}
    parsed: dict[str, BaseDistribution] = {}  # one parse per distinct distribution
    for trial_id, name, internal, distribution_json in query.run(
        connection,
        "SELECT p.trial_id, p.param_name, p.param_value, p.distribution_json "
        "FROM trial_params p JOIN trials t ON t.trial_id = p.trial_id WHERE {where}",
    ):
        if trial_id not in row_of:
            continue  # created after the trials query: not in this view
        distribution = parsed.get(distribution_json)
        if distribution is None:
            distribution = parsed[distribution_json] = json_to_distribution(distribution_json)
        column = params.get(name)
        if column is None:
            column = params[name] = np.full(n, MISSING, dtype=object)
        column[row_of[trial_id]] = distribution.to_external_repr(internal)
        distributions.setdefault(name, distribution)
    return params, distributions


def _curves(
    connection: sa.Connection, query: _Query, row_of: dict[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = query.run(
        connection,
        "SELECT i.trial_id, i.step, i.intermediate_value, i.intermediate_value_type "
        "FROM trial_intermediate_values i JOIN trials t ON t.trial_id = i.trial_id "
        "WHERE {where}",
    ).all()
    rows = [r for r in rows if r[0] in row_of]
    trial_row = np.array([row_of[r[0]] for r in rows], dtype=np.int64)
    step = np.array([r[1] for r in rows], dtype=np.int64)
    values = np.array([_float(r[2], r[3]) for r in rows], dtype=np.float64)
    order = np.lexsort((step, trial_row))
    return trial_row[order], step[order], values[order]


def _user_attrs(
    connection: sa.Connection,
    query: _Query,
    row_of: dict[int, int],
    n: int,
    keys: tuple[str, ...] | None,
) -> dict[str, np.ndarray]:
    sql = (
        "SELECT a.trial_id, a.key, a.value_json FROM trial_user_attributes a "
        "JOIN trials t ON t.trial_id = a.trial_id WHERE {where}"
    )
    extra: dict[str, Any] = {}
    if keys is not None:
        if not keys:
            return {}
        sql += " AND a.key IN :keys"
        extra["keys"] = list(keys)
    attrs: dict[str, np.ndarray] = {}
    for trial_id, key, value_json in query.run(connection, sql, **extra):
        if trial_id not in row_of:
            continue
        column = attrs.get(key)
        if column is None:
            column = attrs[key] = np.full(n, None, dtype=object)
        column[row_of[trial_id]] = json.loads(value_json)
    return attrs


def _name(stored: Any) -> str:
    """An Enum column's value: a str on SQLite, an enum name (or member) elsewhere."""
    return getattr(stored, "name", stored)


def _float(stored: float | None, kind: Any) -> float:
    special = _SPECIAL.get(_name(kind))
    return special if special is not None else float(stored)


def _datetimes(values: list[datetime | None]) -> np.ndarray:
    return np.array([v if v else None for v in values], dtype="datetime64[us]")
