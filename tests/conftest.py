"""Shared fixtures: one local Ray for the whole session, storages for every back end."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def postgres_url() -> str | None:
    """The PostgreSQL URL to test against, or None when no server answers (outside CI)."""
    url = os.environ.get("TEST_DB_URL", DEFAULT_PG_URL)
    try:
        engine = sqlalchemy.create_engine(url)
        with engine.connect():
            pass
        engine.dispose()
        return url
    except sqlalchemy.exc.OperationalError:
        if os.environ.get("CI"):
            raise  # CI has the server: a missing one is a failure, not a skip
        return None


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """Ray starts once per test session (~4 s); every run_study call reuses it."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh SQLite file, or the local PostgreSQL (studies created in it are deleted)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'studies.db'}"
        return
    url = postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL server at TEST_DB_URL / 127.0.0.1:5432")
    before = set(optuna.get_all_study_names(url))
    yield url
    for name in set(optuna.get_all_study_names(url)) - before:
        optuna.delete_study(study_name=name, storage=url)


@pytest.fixture
def study_name() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"
