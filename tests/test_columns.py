"""The read layer's SQL gives exactly what Optuna's own API gives, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime
import math
import uuid

import numpy as np
import optuna
import pytest
import sqlalchemy
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from search.errors import StudyNotFoundError
from search.store import MISSING, TrialColumns, read_changes, read_trials, study_summaries
from tests import db
from tests.conftest import postgres_url

DISTRIBUTIONS = {
    "lr": FloatDistribution(1e-4, 1.0, log=True),
    "depth": CategoricalDistribution([8, 14, 20]),
    "optimizer": CategoricalDistribution(["sgd", "adam"]),
    "batch_size": IntDistribution(32, 256, step=32),
    "momentum": FloatDistribution(0.8, 0.99),
}


def _trial(number: int) -> optuna.trial.FrozenTrial:
    """Every kind of trial a study holds: finished at different epochs, pruned, failed,
    running, conditional parameters, non-finite values, nested attributes."""
    states = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING]
    state = states[number % 4]
    params = {
        "lr": 10 ** -(1 + number % 3),
        "depth": [8, 14, 20][number % 3],
        "optimizer": ["sgd", "adam"][number % 2],
        "batch_size": 32 * (1 + number % 8),
    }
    if params["optimizer"] == "sgd":
        params["momentum"] = 0.9
    epochs = 1 + number % 5
    curve = {e: 0.1 * e + 0.01 * number for e in range(1, epochs + 1)}
    if number == 6:
        curve[epochs] = math.nan  # a NaN epoch is stored, as Optuna stores it
    value = None
    if state == TrialState.COMPLETE:
        value = math.inf if number == 8 else curve[epochs]
    return create_trial(
        params=params,
        distributions={k: DISTRIBUTIONS[k] for k in params},
        value=value,
        state=state,
        intermediate_values=curve,
        user_attrs={
            "stop_reason": "asha",
            "config": {"lr": params["lr"], "nested": [1, 2]},
            "epochs_done": epochs,
        },  # fmt: skip
    )


@pytest.fixture
def filled(storage_url: str, study_name: str) -> str:
    storage = db.storage(storage_url)
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize")
    study.add_trials([_trial(n) for n in range(13)])
    other = optuna.create_study(study_name=study_name + "-min", storage=storage)
    other.add_trials([create_trial(value=v, state=TrialState.COMPLETE) for v in (3.0, 1.0, 1.0)])
    optuna.create_study(study_name=study_name + "-empty", storage=storage)
    multi = optuna.create_study(
        study_name=study_name + "-multi", storage=storage, directions=["maximize", "minimize"]
    )
    multi.add_trial(create_trial(values=[0.5, 2.0], state=TrialState.COMPLETE))
    return study_name


def test_a_null_choice_is_a_value_not_a_missing_parameter(
    tmp_path: pytest.TempPathFactory, study_name: str
) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    choice = CategoricalDistribution([None, "cosine"])
    study = optuna.create_study(study_name=study_name, storage=db.storage(url))
    study.add_trial(create_trial(params={"schedule": None}, distributions={"schedule": choice},
                                 value=1.0))  # fmt: skip
    study.add_trial(create_trial(value=2.0))
    columns = read_trials(db.storage(url).engine, study_name)
    assert columns.params["schedule"][0] is None
    assert columns.params["schedule"][1] is MISSING


def test_a_trial_created_while_reading_is_left_out_not_a_crash(
    tmp_path: pytest.TempPathFactory, study_name: str
) -> None:
    """A driver writes between the read layer's queries: the view is the study as of its
    first query (plus later values of the trials it listed)."""
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name=study_name, storage=db.storage(url))
    study.add_trials([_trial(n) for n in range(4)])
    engine = db.storage(url).engine
    writer = optuna.load_study(study_name=study_name, storage=db.storage(url + "?writer=1"))

    def write_after_trials(conn, cursor, statement, *args) -> None:  # noqa: ANN001
        if statement.lstrip().startswith("SELECT t.trial_id, t.number"):
            trial = writer.ask()
            trial.suggest_float("lr", 1e-4, 1.0, log=True)
            trial.report(0.5, step=1)
            trial.set_user_attr("stop_reason", "asha")

    sqlalchemy.event.listen(engine, "after_cursor_execute", write_after_trials)
    try:
        columns = read_trials(engine, study_name)
    finally:
        sqlalchemy.event.remove(engine, "after_cursor_execute", write_after_trials)
    assert len(columns) == 4 and len(db.load(url, study_name).trials) == 5


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and (b is None or math.isnan(b))
    return a == b or (math.isnan(a) and math.isnan(b))


def test_the_columns_equal_optunas_trials(storage_url: str, filled: str) -> None:
    expected = db.load(storage_url, filled).get_trials(deepcopy=False)
    columns = read_trials(db.storage(storage_url).engine, filled)
    assert len(columns) == len(expected) == 13
    assert columns.direction == "maximize"
    for row, trial in enumerate(expected):
        assert columns.number[row] == trial.number
        assert columns.state[row] == trial.state.name
        assert _same(trial.value, columns.value[row]), (trial.number, trial.value)
        for name in DISTRIBUTIONS:
            expected = trial.params.get(name, MISSING)
            assert columns.params[name][row] == expected, (trial.number, name)
        steps, values = columns.curve(row)
        assert list(steps) == sorted(trial.intermediate_values)
        for step, value in zip(steps, values, strict=True):
            assert _same(trial.intermediate_values[step], value)
        for key, value in trial.user_attrs.items():
            assert columns.user_attrs[key][row] == value
        stamps = (
            (columns.datetime_start[row], trial.datetime_start),
            (columns.datetime_complete[row], trial.datetime_complete),
        )
        for stored, shown in stamps:
            if shown is None:
                assert np.isnat(stored)
            else:  # naive UTC here; Optuna shows local time
                utc = shown.astimezone(datetime.timezone.utc).replace(tzinfo=None)
                assert stored == np.datetime64(utc, "us")
    assert columns.distributions == {k: v for k, v in DISTRIBUTIONS.items()}
    assert list(columns.rows_in("COMPLETE")) == [0, 4, 8, 12]


def test_only_the_asked_attributes_are_read(storage_url: str, filled: str) -> None:
    columns = read_trials(db.storage(storage_url).engine, filled, attr_keys=("epochs_done",))
    assert set(columns.user_attrs) == {"epochs_done"}
    assert read_trials(db.storage(storage_url).engine, filled, attr_keys=()).user_attrs == {}


def test_summaries_count_and_pick_the_best_like_optuna(storage_url: str, filled: str) -> None:
    storage = db.storage(storage_url)
    rows = {row.name: row for row in study_summaries(storage.engine)}
    for name in (filled, filled + "-min", filled + "-empty"):
        study = db.load(storage_url, name)
        trials = study.get_trials(deepcopy=False)
        row = rows[name]
        expected = {s.name: n for s in TrialState if (n := sum(t.state == s for t in trials))}
        assert row.counts == expected and row.total == len(trials)
        assert row.direction == study.direction.name.lower()
        if not any(t.state == TrialState.COMPLETE for t in trials):
            assert row.best_value is None and row.best_number is None
            continue
        best = study.best_trial
        assert row.best_value == best.value
        assert row.best_number == min(t.number for t in trials if t.value == best.value
                                      and t.state == TrialState.COMPLETE)  # fmt: skip
    assert rows[filled].best_value == math.inf  # Optuna's best counts infinite values too
    assert rows[filled + "-min"].best_number == 1  # a tie goes to the earlier trial
    assert rows[filled + "-multi"].direction == "multi-objective"
    assert rows[filled + "-multi"].best_value is None  # a Pareto front has no one best


def test_an_unknown_study_is_named(storage_url: str, filled: str) -> None:
    with pytest.raises(StudyNotFoundError, match="nope"):
        read_trials(db.storage(storage_url).engine, "nope")


def _assert_same(a: TrialColumns, b: TrialColumns) -> None:
    """Every field of two reads of a study, NaN equal to NaN."""
    for name in ("number", "state", "trial_id", "curve_row", "curve_step"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    for name in ("datetime_start", "datetime_complete"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name
    assert np.array_equal(a.value, b.value, equal_nan=True)
    assert np.array_equal(a.curve_value, b.curve_value, equal_nan=True)
    assert a.params.keys() == b.params.keys() and a.distributions == b.distributions
    for name in a.params:
        assert list(a.params[name]) == list(b.params[name]), name
    assert a.user_attrs.keys() == b.user_attrs.keys()
    for key in a.user_attrs:
        assert list(a.user_attrs[key]) == list(b.user_attrs[key]), key
    assert (a.study_id, a.direction, a.attr_keys) == (b.study_id, b.direction, b.attr_keys)


def test_reading_what_changed_gives_the_study_as_a_full_read_does(
    storage_url: str, filled: str
) -> None:
    """A live dashboard reads only new and unfinished trials, and must end up with exactly
    what a full read gives: new trials, new epochs of running ones, finished ones."""
    engine = db.storage(storage_url).engine
    before = read_trials(engine, filled, attr_keys=("epochs_done", "note"))
    running = [int(n) for n in before.number[before.state == "RUNNING"]]
    assert running == [3, 7, 11]

    unchanged = read_changes(engine, before)
    assert list(unchanged.changed) == running and not unchanged.full_read
    _assert_same(unchanged.columns, before)

    storage = db.storage(storage_url)  # writes go through Optuna's checks
    writer = optuna.load_study(study_name=filled, storage=storage)
    study_id = storage.get_study_id_from_name(filled)
    trial_ids = {n: storage.get_trial_id_from_study_id_trial_number(study_id, n) for n in (3,)}
    storage.set_trial_intermediate_value(trial_ids[3], 9, 0.99)  # a new epoch of a running trial
    storage.set_trial_user_attr(trial_ids[3], "note", "epoch 9")
    writer.tell(7, 0.75)  # a running trial finishes
    new = writer.ask()  # a new trial, with a parameter no earlier trial has
    new.suggest_int("width", 16, 64)
    new.report(0.3, step=1)
    new.set_user_attr("epochs_done", 1)
    writer.tell(writer.ask(), state=TrialState.PRUNED)

    changed = read_changes(engine, before)
    assert list(changed.changed) == [*running, 13, 14] and not changed.full_read
    _assert_same(changed.columns, read_trials(engine, filled, attr_keys=("epochs_done", "note")))
    assert changed.columns.params["width"][13] == new.params["width"]
    assert changed.columns.params["width"][0] is MISSING
    assert changed.columns.user_attrs["note"][3] == "epoch 9"
    # Trial 7 finished: the next read no longer fetches it.
    again = read_changes(engine, changed.columns)
    assert list(again.changed) == [3, 11, 13]


def test_a_study_created_again_under_its_name_is_read_whole(storage_url: str, filled: str) -> None:
    engine = db.storage(storage_url).engine
    before = read_trials(engine, filled)
    optuna.delete_study(study_name=filled, storage=db.storage(storage_url))
    study = optuna.create_study(study_name=filled, storage=db.storage(storage_url))
    study.add_trial(create_trial(value=1.0))
    changes = read_changes(engine, before)
    assert changes.full_read and list(changes.changed) == [0]
    _assert_same(changes.columns, read_trials(engine, filled))


def test_a_study_recreated_with_the_same_trial_ids_is_read_whole(storage_url: str) -> None:
    """SQLite hands a study created again the ids its deleted namesake had (the largest id
    plus one): the same study id, trial ids and trial count must not pass for no change."""
    storage = db.storage(storage_url)
    name = f"recreated-{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=name, storage=storage).add_trial(create_trial(value=1.0))
    before = read_trials(storage.engine, name)
    optuna.delete_study(study_name=name, storage=storage)
    optuna.create_study(study_name=name, storage=storage).add_trial(create_trial(value=2.0))
    changes = read_changes(storage.engine, before)
    assert list(changes.columns.value) == [2.0] and changes.full_read
    _assert_same(changes.columns, read_trials(storage.engine, name))
    optuna.delete_study(study_name=name, storage=storage)


def test_a_trial_committed_late_with_a_lower_id_is_not_missed() -> None:
    """Two writers on PostgreSQL: a trial whose transaction commits after a later trial's has
    the lower id; the next read must still bring it in."""
    url = postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL server at TEST_DB_URL / 127.0.0.1:5432")
    storage = db.storage(url)
    name = f"late-{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=name, storage=storage).add_trial(create_trial(value=1.0))
    try:
        first = read_trials(storage.engine, name)
        insert = sqlalchemy.text(
            "INSERT INTO trials (number, study_id, state, datetime_start) "
            "VALUES (:number, :study, 'RUNNING', now()) RETURNING trial_id"
        )
        late = storage.engine.connect()
        transaction = late.begin()
        late.execute(insert, {"number": 1, "study": first.study_id})
        with storage.engine.begin() as other:
            other.execute(insert, {"number": 2, "study": first.study_id})
        middle = read_changes(storage.engine, first)
        assert list(middle.columns.number) == [0, 2]
        transaction.commit()
        late.close()
        after = read_changes(storage.engine, middle.columns)
        assert after.full_read and list(after.columns.number) == [0, 1, 2]
        _assert_same(after.columns, read_trials(storage.engine, name))
    finally:
        optuna.delete_study(study_name=name, storage=storage)
