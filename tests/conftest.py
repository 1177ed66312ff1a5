"""Shared fixtures: one local Ray for the whole session, storages for every back end, and a
guard on the PostgreSQL connections each test holds."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy

from tests import db, drivers
from tests.pg_guard import ConnectionGuard

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


# The highest number of PostgreSQL connections seen during any test, and that test.
PEAK: list = [0, None]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if PEAK[1] is not None:
        terminalreporter.write_line(
            f"PostgreSQL connections to the test database: peak {PEAK[0]} (in {PEAK[1]})"
        )


@pytest.fixture(scope="session")
def guard_engine() -> Iterator[sqlalchemy.Engine | None]:
    """The guard's own engine (no pool: its one connection exists only while it counts)."""
    url = postgres_url()
    if url is None:
        yield None
        return
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    yield engine
    engine.dispose()


@pytest.fixture(autouse=True)
def connection_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every slow-tier test: sample PostgreSQL connections while it runs; fail it if the peak
    exceeds 2 per driver it started plus the test process's allowance, or if it leaves any
    open. (The fast tier touches no PostgreSQL, so it is not sampled and needs no server.)
    Driver processes the test left running are killed after it, so they cannot hold the
    session's Ray CPUs for the next test."""
    drivers.started = 0
    slow = request.node.get_closest_marker("slow") is not None
    if slow:
        request.getfixturevalue("ray_session")  # the drivers it starts join the session's Ray
    guard_engine = request.getfixturevalue("guard_engine") if slow else None
    guarded = guard_engine is not None and not request.node.get_closest_marker(
        "no_connection_guard"
    )
    guard = ConnectionGuard(guard_engine).start() if guarded else None
    try:
        yield
    finally:
        drivers.kill_leftovers()
    if guard is None:
        db.close_all()
        return
    guard.stop()
    if guard.peak > PEAK[0]:
        PEAK[:] = [guard.peak, request.node.nodeid]
    db.close_all()
    guard.check(drivers.started)
    left = guard.settled()
    if left > guard.at_start:
        raise AssertionError(
            f"{left - guard.at_start} PostgreSQL connections this test opened are still open "
            "after it: close storages (search.store._open.close_storage) when done"
        )


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """Ray starts once per test session (~4 s); every run_study call reuses it, and the driver
    processes the tests start join it through ``RAY_ADDRESS`` (``ray.init()`` in a driver
    joins the cluster that variable names) instead of starting their own."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    context = ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR"
    )
    os.environ["RAY_ADDRESS"] = context.address_info["address"]
    yield
    os.environ.pop("RAY_ADDRESS", None)
    ray.shutdown()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tier: real Ray, driver processes, signals, PostgreSQL. Tests that use the
    session's Ray or PostgreSQL are marked here; driver-process tests are marked where they
    are written. ``pytest -m "not slow"`` (``make test-fast``) runs the rest."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_postgres = callspec is not None and "postgresql" in callspec.id
        if "ray_session" in item.fixturenames or on_postgres:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh SQLite file, or the local PostgreSQL (studies created in it are deleted)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'studies.db'}"
        return
    url = postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL server at TEST_DB_URL / 127.0.0.1:5432")
    before = set(db.study_names(url))
    yield url
    for name in set(db.study_names(url)) - before:
        db.delete_study(url, name)


@pytest.fixture
def study_name() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"
