"""Malformed input of every kind: a field-path error, exit code 2, and no database writes."""

from __future__ import annotations

import copy
import sqlite3
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search import ConfigError, parse_study
from search.cli import main
from search.store._open import open_storage
from search.store._schema import meta
from spaces import SpaceError, parse_space
from tests.drivers import write_study
from tests.studies import tiny_study

VALID = tiny_study("valid", "sqlite:///unused.db", Path("unused"))
SECTIONS = ("dataset", "objective", "sampler", "asha", "resources")
WRONG_TYPES = st.sampled_from([[], {}, "text", None, [1, "x"]])  # wrong for every path below


def _paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a nested mapping."""
    paths = []
    if isinstance(data, dict):
        for key, value in data.items():
            paths.append((*prefix, key))
            paths += _paths(value, (*prefix, key))
    return paths


def _set(data: dict, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        data = data.setdefault(key, {})
    data[path[-1]] = value


@st.composite
def malformed_studies(draw: st.DrawFn) -> dict:
    """A valid study with one mistake a person makes: a typo'd key, a wrong type, a missing
    required field, bounds the wrong way round, a log range through zero."""
    study = copy.deepcopy(VALID)
    kind = draw(st.sampled_from(["unknown_key", "wrong_type", "missing", "bounds", "log"]))
    if kind == "unknown_key":
        parents = [()] + [p for p in _paths(study) if isinstance(_get(study, p), dict)]
        parent = draw(st.sampled_from(parents))
        if parent and parent[0] in ("fixed",):
            parent = ()
        name = draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=3, max_size=12))
        target = _get(study, parent)
        if name in target or (parent[:1] == ("space",) and len(parent) == 1):
            name = f"{name}_x"
        _set(study, (*parent, f"zz_{name}"), 1)
    elif kind == "wrong_type":
        path = draw(
            st.sampled_from(
                [
                    ("n_trials",),
                    ("max_concurrent",),
                    ("asha", "max_epochs"),
                    ("asha", "reduction_factor"),
                    ("sampler", "name"),
                    ("objective", "metric"),
                    ("space", "lr", "low"),
                    ("space", "lr", "log"),
                    ("space", "optimizer", "choices"),
                    ("resources", "cpu"),
                    ("dataset", "name"),
                ]
            )
        )
        value = draw(WRONG_TYPES)
        if path == ("space", "optimizer", "choices") and isinstance(value, list) and value:
            value = [{"nested": 1}]
        _set(study, path, value)
    elif kind == "missing":
        path = draw(st.sampled_from([("name",), ("asha",), ("n_trials",), ("space", "lr", "low")]))
        del _get(study, path[:-1])[path[-1]]
    elif kind == "bounds":
        low = draw(st.floats(0.2, 10.0))
        study["space"]["lr"] = {"type": "float", "low": low, "high": low / 2}
    else:
        study["space"]["lr"] = {"type": "float", "low": draw(st.floats(-1.0, 0.0)), "high": 0.1,
                                "log": True}  # fmt: skip
    return study


def _get(data: Any, path: tuple) -> Any:
    for key in path:
        data = data[key]
    return data


def _row_counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as connection:
        tables = [
            r[0] for r in connection.execute("select name from sqlite_master where type='table'")
        ]
        return {t: connection.execute(f'select count(*) from "{t}"').fetchone()[0] for t in tables}


@pytest.fixture(scope="module")
def populated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bad-input")
    db = folder / "studies.db"
    storage = open_storage(f"sqlite:///{db}")
    study = optuna.create_study(study_name="valid", storage=storage, direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5))
    return db


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(study=malformed_studies())
def test_malformed_study_files_name_a_field_and_write_nothing(
    study: dict, populated_db: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    study["storage"] = f"sqlite:///{populated_db}"
    with pytest.raises(ConfigError) as error:
        parse_study(study, source="study.yaml")
    assert error.value.path and str(error.value).startswith(f"study.yaml: {error.value.path}: ")

    before = _row_counts(populated_db)
    path = write_study(tmp_path_factory.mktemp("study") / "study.yaml", study)
    assert main(["run", str(path)]) == 2
    assert _row_counts(populated_db) == before


SPACE_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(-2, 2), st.text(max_size=5)
)


@st.composite
def malformed_spaces(draw: st.DrawFn) -> dict:
    kind = draw(st.sampled_from(["float", "int", "categorical"]))
    spec: dict[str, Any] = {"type": kind}
    if kind == "categorical":
        spec["choices"] = draw(st.sampled_from([[], "abc", 5, [[1]], [{"a": 1}]]))
    else:
        low = draw(SPACE_VALUES)
        spec.update(low=low, high=draw(SPACE_VALUES), log=draw(st.sampled_from([True, "yes", 1])))
    if draw(st.booleans()):
        spec[draw(st.sampled_from(["scale", "lower", "q"]))] = 1
    return {"param": spec}


@settings(max_examples=150, deadline=None)
@given(raw=malformed_spaces())
def test_malformed_spaces_name_the_field(raw: dict) -> None:
    try:
        parse_space(raw)
    except SpaceError as error:
        assert error.path.startswith("space.param")
        return
    # The generator can produce a valid space by chance (e.g. int 1..3, log: True): check it.
    spec = raw["param"]
    assert spec["type"] in ("float", "int") and spec["log"] is True
    assert 0 < spec["low"] <= spec["high"]


def test_database_of_a_newer_schema_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "newer.db"
    storage = open_storage(f"sqlite:///{db}")
    with storage.engine.begin() as connection:
        connection.execute(sa.update(meta).where(meta.c.key == "schema_version").values(value="99"))
    before = _row_counts(db)
    study = write_study(tmp_path / "s.yaml", tiny_study("s", f"sqlite:///{db}", tmp_path))
    assert main(["run", str(study)]) == 2
    err = capsys.readouterr().err
    assert "schema version 99" in err and str(db) in err
    assert main(["studies", "--storage", f"sqlite:///{db}"]) == 2
    assert _row_counts(db) == before


def test_database_of_an_unknown_optuna_schema_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "future-optuna.db"
    open_storage(f"sqlite:///{db}")
    with sqlite3.connect(db) as connection:
        connection.execute("update alembic_version set version_num = 'v99.0.0.z'")
    study = write_study(tmp_path / "s.yaml", tiny_study("s", f"sqlite:///{db}", tmp_path))
    assert main(["run", str(study)]) == 2
    assert "Optuna whose table schema this one cannot use" in capsys.readouterr().err
    before = _row_counts(db)
    assert main(["studies", "--storage", f"sqlite:///{db}"]) == 2
    assert _row_counts(db) == before


def test_a_file_that_is_no_database_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "notes.db"
    db.write_text("these are my notes, not a database\n" * 100)
    study = write_study(tmp_path / "s.yaml", tiny_study("s", f"sqlite:///{db}", tmp_path))
    assert main(["run", str(study)]) == 2
    assert f"cannot use {db} as a study database" in capsys.readouterr().err
    assert db.read_text().startswith("these are my notes")
