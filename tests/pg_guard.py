"""A guard on PostgreSQL connections: samples how many a test holds, fails the one that leaks.

Counting only after ``gc.collect()`` would miss the leak this guards against (engines whose
connections close exactly when the collector runs), so a background thread samples
``pg_stat_activity`` every 0.1 s while the test runs and keeps the peak.
"""

from __future__ import annotations

import os
import threading
import time

import sqlalchemy as sa

# What one driver process holds: its study storage's pool (main thread + lease heartbeat;
# Optuna's storage also uses two while it starts).
CONNECTIONS_PER_DRIVER = 2
# What the test process may hold besides the drivers it started: one in-process driver
# (run_study or the CLI called in the test: 2), the test helpers' storage (2, as a driver's)
# and the product's cached read-only storage (1, 2 while it opens).
TEST_PROCESS_ALLOWANCE = 6

# Every connection of this test session (the pytest process and the drivers it starts) carries
# this application name (libpq reads PGAPPNAME), so other clients of the same server, such as a
# second test session, are not counted.
APPLICATION_NAME = f"resnet-hpo-tests-{os.getpid()}"
os.environ["PGAPPNAME"] = APPLICATION_NAME

_COUNT = sa.text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND pid <> pg_backend_pid() AND application_name = :name"
).bindparams(name=APPLICATION_NAME)


class ConnectionLeakError(AssertionError):
    """A test held more PostgreSQL connections than it needs."""


class ConnectionGuard:
    """Samples the connections to the database of ``url`` (excluding its own) from a thread."""

    def __init__(self, engine: sa.Engine, interval_s: float = 0.1) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self.peak = 0
        self.at_start = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connection: sa.Connection | None = None

    def count(self) -> int:
        assert self._connection is not None
        value = int(self._connection.execute(_COUNT).scalar_one())
        self._connection.rollback()  # no transaction stays open between samples
        return value

    def start(self) -> ConnectionGuard:
        self._connection = self.engine.connect()
        self.at_start = self.peak = self.count()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="pg-guard", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.count())

    def stop(self) -> int:
        """Stop sampling; returns the peak seen (one last sample included)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self.count())
        assert self._connection is not None
        self._connection.close()
        self._connection = None
        return self.peak

    def check(self, drivers: int, allowance: int = TEST_PROCESS_ALLOWANCE) -> None:
        """Raise if the peak went beyond what ``drivers`` drivers and the test itself need."""
        limit = CONNECTIONS_PER_DRIVER * drivers + allowance
        if self.peak > limit:
            raise ConnectionLeakError(
                f"this test held up to {self.peak} PostgreSQL connections; it needs at most "
                f"{limit} ({CONNECTIONS_PER_DRIVER} x {drivers} drivers + {allowance} for the "
                "test process). Something opens a storage per call instead of reusing one."
            )

    def settled(self, timeout_s: float = 10.0) -> int:
        """Connections open once those of ended processes have gone (killed drivers' server
        processes take a moment to notice)."""
        deadline = time.monotonic() + timeout_s
        with self.engine.connect() as connection:
            while True:
                now = int(connection.execute(_COUNT).scalar_one())
                connection.rollback()
                if now <= self.at_start or time.monotonic() > deadline:
                    return now
                time.sleep(0.1)
