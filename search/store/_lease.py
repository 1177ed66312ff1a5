"""One driver per study: a lease row in the study's database.

The driver that holds a study's lease is the only process that writes the study. The row
says who holds it (owner id, host, pid) and when it last proved it is alive (heartbeat,
renewed by a background thread). A lease is stale, and the next driver takes it over, when
its heartbeat is older than ``timeout_s``, or at once when its holder is visibly gone, so
re-running right after a crash just works:

- its holder ran on this host and that process is gone;
- on PostgreSQL, its holder's database session ended and its heartbeat is older than two
  beats (``timeout_s / 3``). The holder keeps a session-level advisory lock (a random key,
  in the row) on a connection of its own, which also carries its heartbeat; the server
  drops that lock the moment the connection closes, which a killed process's kernel does at
  once. A live holder whose session ended (a database restart, a terminated backend) finds
  out on its next beat, stops trusting its lease and renews before its next write (opening
  a new session and taking its lock again, or finding the lease taken); the two beats'
  wait keeps a newcomer from writing while that holder might still trust its lease. So a
  driver restarted on another host after its old host's driver was killed waits a third of
  the timeout, not all of it. A host that vanishes without closing its connections (power
  loss) still costs the timeout. The lock needs a real session: connect directly or through
  a session-mode pooler, not a transaction-mode one (PgBouncer's ``pool_mode=transaction``
  shares sessions between clients).

A holder trusts its lease without asking the database only for half the timeout after its
last successful renewal (on PostgreSQL a sixth: a beat under the two beats' grace above, so
a holder that was paused while its session ended asks before it writes); past that (it was
paused, or its heartbeat thread was starved), the next write first renews the lease, and a
renewal that finds another owner means the lease is lost: the driver writes nothing more.
A driver paused between that check and a write could still write once; the check narrows
that window to one database write.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from search.errors import UserError
from search.store._schema import leases

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0
# Beats per timeout: one missed or slow beat never lets the lease go stale.
BEATS_PER_TIMEOUT = 6
# Beats a holder whose session ended has been silent before a newcomer takes over: by then its
# own failed beat has made it stop trusting the lease.
SESSION_GRACE_BEATS = 2
# The lease's own PostgreSQL connection: fail fast on a dead network (unanswered sends too:
# tcp_user_timeout, ms; client-side settings) or a row lock that is not let go (set on the
# session once connected: a session-mode PgBouncer refuses server settings at start-up).
_LIBPQ_TIMEOUTS = {
    "connect_timeout": 10, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
    "keepalives_count": 3, "tcp_user_timeout": 30000,
}  # fmt: skip
_SESSION_TIMEOUTS = (sa.text("SET statement_timeout = 20000"), sa.text("SET lock_timeout = 20000"))


class LeaseHeldError(UserError):
    """Another live driver runs this study."""


class LeaseLostError(UserError):
    """Another driver took this driver's lease while it was paused or cut off."""

    exit_code = 3


@dataclass(frozen=True)
class LeaseHolder:
    owner: str
    host: str
    pid: int
    process_start: str | None
    heartbeat: float
    # Boot id and PID namespace of the holder: a pid means this host's process only for the
    # same kernel boot and namespace (containers with --network host, host-network pods and
    # cloned VMs share a hostname but not their pids).
    namespace: str | None = None
    timeout_s: float | None = None  # the holder's own lease_timeout_s
    session_lock: int | None = None  # PostgreSQL: the advisory lock its session holds

    @classmethod
    def from_row(cls, row: Any) -> LeaseHolder:
        return cls(row.owner, row.host, row.pid, row.process_start, row.heartbeat,
                   row.namespace, row.timeout_s, row.session_lock)  # fmt: skip


def _clock() -> float:
    """Seconds on a clock that keeps counting while the machine is suspended (a paused VM):
    a lease holder must count that time against its lease."""
    if hasattr(time, "CLOCK_BOOTTIME"):
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.monotonic()


def pid_namespace() -> str | None:
    """``<boot id>/<PID namespace inode>`` of this process, or None where /proc lacks them."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot = handle.read().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a reused pid from the original), if known."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive_here(holder: LeaseHolder) -> bool:
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    start = _process_start(holder.pid)
    return holder.process_start is None or start is None or start == holder.process_start


def stale_because(holder: LeaseHolder, now: float, timeout_s: float) -> str | None:
    """Why the lease is stale, or None while its holder may be alive: its heartbeat is older
    than the longer of the two drivers' timeouts (a holder with a long timeout beats rarely),
    or its holder's process is visibly gone, which is only visible for a holder in this
    host's boot and PID namespace. (A holder's ended database session is checked apart, in
    the acquiring transaction: :func:`_session_ended`.)"""
    silent = now - holder.heartbeat
    if silent > max(timeout_s, holder.timeout_s or 0.0):
        return f"its heartbeat stopped {silent:.0f} s ago"
    here = holder.host == socket.gethostname() and holder.namespace == pid_namespace()
    if here and not _alive_here(holder):
        return "its process is gone"
    return None


_TRY_LOCK = sa.text("SELECT pg_try_advisory_lock(:key)")
# The newcomer's probe: a transaction-level lock, let go when its transaction ends whatever
# happens in between (a session-level one would outlive a rollback on a pooled connection).
_PROBE_LOCK = sa.text("SELECT pg_try_advisory_xact_lock(:key)")


def _session_ended(connection: sa.Connection, holder: LeaseHolder) -> bool:
    """PostgreSQL: the holder's advisory lock is free, so the session that held it for the
    holder's whole life has ended (the holder died or lost its connection). The probe's lock
    goes with the acquiring transaction."""
    if holder.session_lock is None or connection.dialect.name != "postgresql":
        return False
    return bool(connection.execute(_PROBE_LOCK, {"key": holder.session_lock}).scalar_one())


class DriverLease:
    """Acquire with :meth:`acquire`; keeps the heartbeat until :meth:`release`."""

    def __init__(
        self,
        engine: sa.Engine,
        study_name: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        heartbeat_every_s: float | None = None,
    ) -> None:
        self.engine = engine
        self.study_name = study_name
        self.timeout_s = timeout_s
        # Never slower than timeout / 6: a newcomer's grace after an ended session assumes it.
        # On PostgreSQL twice as often: the lease is trusted for one beat of timeout / 6
        # (trusted_for_s), and a beat every half of that keeps writes from asking first.
        beat = timeout_s / BEATS_PER_TIMEOUT
        if engine.dialect.name == "postgresql":
            beat /= 2
        self.heartbeat_every_s = min(heartbeat_every_s or beat, beat)
        self.owner = uuid.uuid4().hex
        self.took_over: LeaseHolder | None = None
        self.took_over_because: str | None = None
        # PostgreSQL: a connection of the lease's own, outside the storage's pool, that holds
        # the advisory lock ``session_lock`` while this driver lives and carries the heartbeat.
        self.session_lock: int | None = None
        self._session: sa.Connection | None = None
        self._session_engine: sa.Engine | None = None
        self._locked = False  # whether _session holds session_lock
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread: threading.Thread | None = None
        self._renew_lock = threading.Lock()
        self._confirmed_at = 0.0  # _clock() of the last proof that we hold it

    def acquire(self) -> DriverLease:
        try:
            if self.engine.dialect.name == "postgresql":
                self._open_session()
                if not self._locked:  # a fresh random key: 1 chance in 2**62
                    raise RuntimeError(f"advisory lock {self.session_lock} is taken")
            self._claim_row()
        except BaseException:
            self._close_session()
            raise
        self._confirmed_at = _clock()
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _open_session(self) -> None:
        """Connect outside the pool (closing it must end the session, which drops the lock)
        and take a fresh random advisory lock: free by construction."""
        if self._session_engine is None:
            timeouts = (
                _LIBPQ_TIMEOUTS if self.engine.dialect.driver in ("psycopg", "psycopg2") else {}
            )
            self._session_engine = sa.create_engine(
                self.engine.url, poolclass=sa.pool.NullPool, connect_args=timeouts
            )
        self._session = self._session_engine.connect().execution_options(
            isolation_level="AUTOCOMMIT"
        )
        for setting in _SESSION_TIMEOUTS:
            self._session.execute(setting)
        if self.session_lock is None:
            self.session_lock = secrets.randbits(62)
        self._take_lock()

    def _take_lock(self) -> None:
        assert self._session is not None
        self._locked = bool(
            self._session.execute(_TRY_LOCK, {"key": self.session_lock}).scalar_one()
        )

    def _close_session(self) -> None:
        if self._session is not None:
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                self._session.close()  # the server drops the lock with the session
            self._session = None
            self._locked = False

    def _claim_row(self) -> None:
        now = time.time()
        me = {
            "study_name": self.study_name,
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process_start": _process_start(os.getpid()),
            "namespace": pid_namespace(),
            "timeout_s": self.timeout_s,
            "session_lock": self.session_lock,
            "heartbeat": now,
            "acquired": now,
        }
        with self.engine.begin() as connection:
            if connection.dialect.name == "sqlite":
                connection.exec_driver_sql("BEGIN IMMEDIATE")  # serialise concurrent starts
            row = connection.execute(
                sa.select(leases).where(leases.c.study_name == self.study_name).with_for_update()
            ).first()
            if row is not None:
                holder = LeaseHolder.from_row(row)
                because = stale_because(holder, now, self.timeout_s)
                holder_timeout = holder.timeout_s or self.timeout_s
                grace = SESSION_GRACE_BEATS * holder_timeout / BEATS_PER_TIMEOUT
                if (
                    because is None
                    and now - holder.heartbeat > grace
                    and _session_ended(connection, holder)
                ):
                    because = "its database session ended"
                if because is None:
                    sooner = (
                        f" (on PostgreSQL {grace:.0f} s, once its database session has ended)"
                        if holder.session_lock is not None
                        else ""
                    )
                    raise LeaseHeldError(
                        f"study {self.study_name!r} is being run by another driver (pid "
                        f"{holder.pid} on {holder.host}, heartbeat {now - holder.heartbeat:.0f}"
                        f" s ago). Wait for it to finish; if it is dead, its lease expires "
                        f"{max(self.timeout_s, holder_timeout):.0f} s after its last "
                        f"heartbeat{sooner}."
                    )
                self.took_over, self.took_over_because = holder, because
                connection.execute(
                    sa.update(leases).where(leases.c.study_name == self.study_name).values(**me)
                )
            else:
                try:
                    connection.execute(sa.insert(leases).values(**me))
                except sa.exc.IntegrityError:
                    # Another driver inserted the row between our read and our write.
                    raise LeaseHeldError(
                        f"study {self.study_name!r} was just taken by another driver; wait for "
                        "it to finish"
                    ) from None

    def _renew(self) -> bool:
        """Renew the heartbeat; False (and :attr:`lost` set) if another driver holds it."""
        with self._renew_lock:
            if self.lost.is_set() or self._stop.is_set():
                return False  # lost, or released: nothing to renew (and no session to reopen)
            asked_at = _clock()
            renew = (
                sa.update(leases)
                .where(leases.c.study_name == self.study_name, leases.c.owner == self.owner)
                .values(heartbeat=time.time())
            )
            if self.session_lock is None:
                with self.engine.begin() as connection:
                    renewed = connection.execute(renew).rowcount
            else:
                renewed = self._renew_in_session(renew)
            if renewed == 0:
                if self._stop.is_set():
                    return False  # released meanwhile: our own row is gone, nobody took it
                self.lost.set()
                logger.info("lost the lease of %s to another driver", self.study_name)
                return False
            self._confirmed_at = asked_at
            return True

    def _renew_in_session(self, renew: sa.Update) -> int:
        """The heartbeat on the lease's own connection (autocommit: one statement). A broken
        connection is opened again with the same lock: if another driver found the lock free
        meanwhile and took the lease, the renewal finds another owner and the lease is lost."""
        try:
            if self._session is None or self._session.closed or self._session.invalidated:
                self._close_session()
                self._open_session()
            elif not self._locked:  # a newcomer's probe held it when we reconnected
                self._take_lock()
            assert self._session is not None
            return self._session.execute(renew).rowcount
        except sa.exc.SQLAlchemyError:
            # The session may have ended, and with it the lock: another driver may take the
            # lease two beats after our last one, so stop trusting it now; the next write
            # renews first (reconnecting, or failing the run if the database is gone), and
            # the next beat reconnects too.
            self._confirmed_at = -math.inf
            self._close_session()
            raise

    def trusted_for_s(self) -> float:
        """How long a renewal is trusted without asking again: half the timeout; on
        PostgreSQL a sixth, one beat under the two (a third of the timeout) after which a
        newcomer may take over from an ended session, whatever the heartbeat thread does
        (paused, starved, dead): that beat is the margin for the hosts' clocks."""
        if self.session_lock is not None:
            return (SESSION_GRACE_BEATS - 1) * self.timeout_s / BEATS_PER_TIMEOUT
        return self.timeout_s / 2

    def still_held(self) -> bool:
        """Whether this driver may still write: trusted for :meth:`trusted_for_s` after the
        last renewal, renewed (one database round trip) past that."""
        if self.lost.is_set():
            return False
        if _clock() - self._confirmed_at < self.trusted_for_s():
            return True
        return self._renew()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_every_s):
            try:
                if not self._renew():
                    return  # another driver took the lease (we were paused past the timeout)
            except sa.exc.SQLAlchemyError as error:
                # A busy or briefly unreachable database must not end the heartbeat: the next
                # beat retries, and the lease only goes stale after timeout_s of failures.
                logger.warning("lease heartbeat for %s failed: %s", self.study_name, error)

    def current_holder(self) -> LeaseHolder | None:
        """Who holds this study's lease now, as the database says (None if nobody)."""
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(leases).where(leases.c.study_name == self.study_name)
            ).first()
        if row is None:
            return None
        return LeaseHolder.from_row(row)

    def release(self) -> None:
        """Stop the heartbeat and delete our row (never another driver's). A database that
        cannot be reached leaves the row, which goes stale after the timeout; that is logged,
        never raised, so it cannot hide the error that ended the run."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    sa.delete(leases).where(
                        leases.c.study_name == self.study_name, leases.c.owner == self.owner
                    )
                )
        except sa.exc.SQLAlchemyError as error:
            logger.warning(
                "could not release the lease of %s (%s); it expires %.0f s after its last "
                "heartbeat", self.study_name, str(error).splitlines()[0], self.timeout_s,
            )  # fmt: skip
        finally:
            # Not while a beat uses the connection; a beat stuck on a dead network is left to
            # its timeouts, and the session closes with the process at the latest.
            if self._renew_lock.acquire(timeout=5):
                try:
                    self._close_session()
                finally:
                    self._renew_lock.release()
            if self._session_engine is not None:
                self._session_engine.dispose()

    def __enter__(self) -> DriverLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
