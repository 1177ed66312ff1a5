"""Opening the SQL study storage: writable for the driver, read-only for readers.

SQLite files get WAL journaling, so ``report`` and ``studies`` can read while a driver writes.
Readers open SQLite with ``mode=ro`` and PostgreSQL with read-only transactions, so a reader
can never change a study, and opening a database that does not exist creates nothing.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

from search.errors import StorageError
from search.schema import check_schema, ensure_schema


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
    return {"pool_pre_ping": True}


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Writable storage for the driver; creates the SQLite file (and folder) if missing."""
    _parse(url)
    path = sqlite_path(url)
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with sqlite3.connect(path) as connection:
                connection.execute("PRAGMA journal_mode=WAL")  # persistent in the file
    except (OSError, sqlite3.Error) as error:
        raise StorageError(
            f"cannot use {path} as a study database ({error}); pass --storage with another file"
        ) from None
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
        ensure_schema(storage.engine, _safe(url))
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, RuntimeError) as error:
        raise StorageError(_explain(url, error)) from None
    return storage


def open_storage_readonly(url: str) -> optuna.storages.RDBStorage:
    """Read-only storage for reports and listings; a missing database is an error."""
    _parse(url)
    path = sqlite_path(url)
    kwargs = _engine_kwargs(url)
    if path is not None:
        if not path.is_file():
            raise StorageError(
                f"no study database at {path} (storage {url!r}); run a study first, or pass "
                "--storage with the URL the study was run with"
            )
        url = f"sqlite:///file:{path.resolve()}?mode=ro&uri=true"
    else:
        kwargs["connect_args"] = {"options": "-c default_transaction_read_only=on"}
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs, skip_table_creation=True)
        with storage.engine.connect() as connection:
            check_schema(connection, _safe(url))
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, RuntimeError) as error:
        raise StorageError(_explain(url, error)) from None
    return storage


def _safe(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _explain(url: str, error: Exception) -> str:
    safe = _safe(url)
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
