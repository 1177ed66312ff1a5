"""Opening the SQL study storage: writable for the driver, read-only for readers.

SQLite files get WAL journaling, so ``report`` and ``studies`` can read while a driver writes.
Readers open SQLite with ``mode=ro`` and PostgreSQL with read-only transactions, so a reader
can never change a study, and opening a database that does not exist creates nothing.

Connections are a server's scarcest resource (PostgreSQL's default ``max_connections`` is 100),
and an ``RDBStorage`` left to the garbage collector keeps its pooled connections open until
Python's cycle collector happens to run (measured: 40 ``optuna.load_study`` calls on PostgreSQL
left 6 connections open). So every storage opened here is closed on purpose:
:func:`close_storage` for a writer when its run ends, and read-only storages are kept one per
URL for the life of the process (a reader that polls reuses one engine) and closed at exit.
"""

from __future__ import annotations

import atexit
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

from search.errors import StorageError
from search.store._schema import check_schema, ensure_schema

# What opening a storage raises for a bad file, URL or server (Optuna's schema-version check
# raises RuntimeError; a missing driver, ImportError).
OPEN_ERRORS = (
    sqlalchemy.exc.SQLAlchemyError,
    optuna.exceptions.StorageInternalError,
    ImportError,
    RuntimeError,
)


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL, or None for other back ends."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database or parsed.database == ":memory:":
        raise StorageError(f"storage {url!r}: use a file, e.g. sqlite:///runs/studies.db")
    return Path(parsed.database)


def _parse(url: str) -> None:
    try:
        make_url(url)
    except sqlalchemy.exc.ArgumentError as error:
        raise StorageError(
            f"storage {url!r} is not a SQLAlchemy URL ({error}); use e.g. "
            "sqlite:///runs/studies.db or postgresql+psycopg://user@host:5432/db"
        ) from None


def _engine_kwargs(url: str) -> dict:
    if sqlite_path(url) is not None:
        # A driver and readers share the file; wait for locks instead of failing at once.
        return {"connect_args": {"timeout": 60}}
    # A driver writes from its main thread only (its lease beats on a connection of its own):
    # one pooled connection; Optuna's start-up briefly uses a second, closed when returned.
    return {"pool_pre_ping": True, "pool_size": 1, "max_overflow": 1}


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Writable storage for the driver; creates the SQLite file (and folder) if missing."""
    _parse(url)
    path = sqlite_path(url)
    _refuse_foreign_tables(url)
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with sqlite3.connect(path) as connection:
                connection.execute("PRAGMA journal_mode=WAL")  # persistent in the file
    except (OSError, sqlite3.Error) as error:
        raise StorageError(
            f"cannot use {path} as a study database ({error}); pass --storage with another file"
        ) from None
    storage = None
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
        ensure_schema(storage.engine, safe_url(url))
    except OPEN_ERRORS as error:
        if storage is not None:
            close_storage(storage)
        raise StorageError(_explain(url, error)) from None
    return storage


# Optuna's schema always has this table; a database with tables but without it belongs to
# something else, and a driver must not add its tables to it (or switch it to WAL).
OPTUNA_MARKER_TABLE = "version_info"


def check_storage(url: str) -> None:
    """Everything :func:`open_storage` would refuse, checked without writing anything: a bad
    URL, an unreachable server, a file that is no database or holds someone else's tables, an
    incompatible schema version (ours or Optuna's)."""
    _parse(url)
    if _refuse_foreign_tables(url):
        close_storage(_open_readonly(url))


def _refuse_foreign_tables(url: str) -> bool:
    """Refuse a database that holds tables but no Optuna study schema, before any write.
    Returns whether it holds a study database already."""
    path = sqlite_path(url)
    if path is not None and (not path.is_file() or path.stat().st_size == 0):
        return False  # a new or empty file: nothing there to protect
    probe_url = f"sqlite:///file:{path.resolve()}?mode=ro&uri=true" if path else url
    engine = sqlalchemy.create_engine(probe_url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            tables = sqlalchemy.inspect(connection).get_table_names()
    except OPEN_ERRORS as error:
        if path is not None:
            raise StorageError(
                f"cannot use {path} as a study database ({str(error).splitlines()[0]}); pass "
                "--storage with another file"
            ) from None
        raise StorageError(_explain(url, error)) from None
    finally:
        engine.dispose()
    if tables and OPTUNA_MARKER_TABLE not in tables:
        shown = ", ".join(sorted(tables)[:6]) + (", ..." if len(tables) > 6 else "")
        raise StorageError(
            f"storage {safe_url(url)} holds tables of something else ({shown}) and no study "
            "database; nothing was written to it. Use a new file or database for studies"
        )
    return bool(tables)


# Read-only storages by URL, most recently used last; a process that reads many databases
# (tests, a dashboard over several files) keeps at most this many engines open.
MAX_CACHED_READERS = 8
_readers: OrderedDict[str, optuna.storages.RDBStorage] = OrderedDict()
_readers_lock = threading.Lock()


def close_storage(storage: optuna.storages.BaseStorage) -> None:
    """Close the storage's pooled connections now instead of at garbage collection."""
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()


def open_storage_readonly(url: str) -> optuna.storages.RDBStorage:
    """Read-only storage for reports and listings; a missing database is an error.

    One storage per URL per process: a second call (a polling reader, an ablation's next
    round) gets the same engine and its one pooled connection."""
    with _readers_lock:
        storage = _readers.get(url)
        if storage is not None:
            _readers.move_to_end(url)
            return storage
    storage = _open_readonly(url)
    with _readers_lock:
        if url in _readers:  # another thread opened it meanwhile: keep one
            close_storage(storage)
            return _readers[url]
        _readers[url] = storage
        while len(_readers) > MAX_CACHED_READERS:
            close_storage(_readers.popitem(last=False)[1])
    return storage


@atexit.register
def close_readonly_storages() -> None:
    """Close every cached read-only storage (at exit; tests call it between cases)."""
    with _readers_lock:
        storages = list(_readers.values())
        _readers.clear()
    for storage in storages:
        close_storage(storage)


def _open_readonly(url: str) -> optuna.storages.RDBStorage:
    _parse(url)
    path = sqlite_path(url)
    kwargs = _engine_kwargs(url)
    if path is not None and not path.is_file():
        raise StorageError(
            f"no study database at {path} (storage {url!r}); run a study first, or pass "
            "--storage with the URL the study was run with"
        )
    if not _refuse_foreign_tables(url):
        raise StorageError(
            f"no study database in {safe_url(url)}: it holds no tables; run a study first, or "
            "pass --storage with the URL the study was run with"
        )
    given = url
    if path is not None:
        url = f"sqlite:///file:{path.resolve()}?mode=ro&uri=true"
    else:
        kwargs["connect_args"] = {"options": "-c default_transaction_read_only=on"}
        # A reader is single-threaded: one pooled connection (Optuna's start-up briefly
        # uses a second, which closes when returned).
        kwargs.update(pool_size=1, max_overflow=2)
    storage = None
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs, skip_table_creation=True)
        with storage.engine.connect() as connection:
            check_schema(connection, safe_url(given))
    except OPEN_ERRORS as error:
        if storage is not None:
            close_storage(storage)
        raise StorageError(_explain(given, error)) from None
    return storage


@contextmanager
def reading(url: str) -> Iterator[None]:
    """Turn a database failure while reading ``url`` into a one-line StorageError (Optuna
    wraps them in StorageInternalError, which is not a SQLAlchemy error)."""
    try:
        yield
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as error:
        raise StorageError(_explain(url, error)) from None


def safe_url(url: str) -> str:
    """The URL with its password hidden: for messages, logs and pages."""
    return make_url(url).render_as_string(hide_password=True)


def _explain(url: str, error: Exception) -> str:
    safe = safe_url(url)
    if "no longer compatible" in str(error) or "runtime optuna version" in str(error):
        return (
            f"storage {safe} was made by an Optuna whose table schema this one cannot use "
            f"({str(error).strip().splitlines()[0]}). Open it with the versions that made it, "
            "or upgrade it with `optuna storage upgrade --storage URL`."
        )
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (
        f"cannot open storage {safe}: {first_line}. Check that the server is running and the "
        "URL (driver, host, port, database, user) is right; PostgreSQL URLs look like "
        "postgresql+psycopg://user@127.0.0.1:5432/dbname"
    )
