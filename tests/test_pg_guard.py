"""The connection guard itself: it must catch a test that opens a storage per poll."""

from __future__ import annotations

import gc

import optuna
import pytest
import sqlalchemy

from tests import db
from tests.conftest import postgres_url
from tests.pg_guard import TEST_PROCESS_ALLOWANCE, ConnectionGuard, ConnectionLeakError

# PostgreSQL: the slow tier.
pytestmark = pytest.mark.slow

POLLS = 40


@pytest.mark.no_connection_guard  # this test leaks on purpose, then cleans up
def test_guard_fails_polling_with_load_study_and_passes_the_helpers(study_name: str) -> None:
    url = postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL server")
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    optuna.create_study(study_name=study_name, storage=db.storage(url))
    try:
        # The old helpers' way: a new storage (engine) per poll. Its connections close only
        # when the cycle collector runs; keep it from running, as it often does not in time.
        gc.disable()
        guard = ConnectionGuard(engine).start()
        for _ in range(POLLS):
            optuna.load_study(study_name=study_name, storage=url).get_trials(deepcopy=False)
        guard.stop()
        with pytest.raises(ConnectionLeakError, match="Something opens a storage per call"):
            guard.check(drivers=0)
        assert guard.peak > TEST_PROCESS_ALLOWANCE
        gc.enable()
        gc.collect()
        # Closed connections leave pg_stat_activity when their server process exits.
        assert guard.settled() <= guard.at_start

        # The helpers' way now: one storage per URL for the whole test.
        guard = ConnectionGuard(engine).start()
        for _ in range(POLLS):
            db.trials(url, study_name)
            db.load(url, study_name).get_trials(deepcopy=False)
        guard.stop()
        guard.check(drivers=0)
        assert guard.peak <= 2
    finally:
        gc.enable()
        gc.collect()
        db.delete_study(url, study_name)
        db.close_all()
        engine.dispose()
