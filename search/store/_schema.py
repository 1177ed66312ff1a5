"""resnet-hpo's own tables, next to Optuna's in the same database.

``resnet_hpo_meta`` holds the schema version of these tables, so that a database written by
a newer, incompatible resnet-hpo is refused with a message instead of misread.
"""

from __future__ import annotations

import sqlalchemy as sa

from search.errors import StorageError

# 2: the lease row records the holder's boot id and PID namespace (``namespace``) and its
# own timeout (``timeout_s``).
# 3: and, on PostgreSQL, the advisory lock its database session holds (``session_lock``).
SCHEMA_VERSION = 3

metadata = sa.MetaData()
meta = sa.Table(
    "resnet_hpo_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)
leases = sa.Table(
    "resnet_hpo_leases",
    metadata,
    sa.Column("study_name", sa.String(512), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("host", sa.String(256), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("process_start", sa.String(32), nullable=True),
    sa.Column("heartbeat", sa.Float, nullable=False),
    sa.Column("acquired", sa.Float, nullable=False),
    sa.Column("namespace", sa.String(128), nullable=True),
    sa.Column("timeout_s", sa.Float, nullable=True),
    sa.Column("session_lock", sa.BigInteger, nullable=True),
)
# Columns later versions added to the lease table, with their SQL types.
ADDED_COLUMNS = {"namespace": "VARCHAR(128)", "timeout_s": "FLOAT", "session_lock": "BIGINT"}


def stored_schema_version(connection: sa.Connection) -> int | None:
    if not sa.inspect(connection).has_table(meta.name):
        return None
    value = connection.execute(
        sa.select(meta.c.value).where(meta.c.key == "schema_version")
    ).scalar()
    return int(value) if value is not None else None


def check_schema(connection: sa.Connection, url: str) -> None:
    """Refuse a database written by a newer resnet-hpo (an older one is upgraded by writers
    and readable as it is)."""
    version = stored_schema_version(connection)
    if version is not None and version > SCHEMA_VERSION:
        raise StorageError(
            f"storage {url} was written by a resnet-hpo with schema version {version}; this "
            f"resnet-hpo reads version {SCHEMA_VERSION} and older. Use the resnet-hpo version "
            "that made it, or start a new database."
        )


def ensure_schema(engine: sa.Engine, url: str) -> None:
    """Create our tables if missing, or upgrade them (writers only), after checking the
    version. Concurrent writers are serialised (SQLite: an immediate transaction;
    PostgreSQL: a transaction-level advisory lock), so an upgrade runs once."""
    with engine.begin() as connection:
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(7261306)"))
        check_schema(connection, url)
        metadata.create_all(connection)
        version = stored_schema_version(connection)
        if version is None:
            connection.execute(
                sa.insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION))
            )
            return
        # Columns an older table lacks (checked by name, whatever the recorded version says);
        # older lease rows have none of them and are judged by their heartbeat.
        present = {c["name"] for c in sa.inspect(connection).get_columns(leases.name)}
        for column, sql_type in ADDED_COLUMNS.items():
            if column not in present:
                connection.execute(
                    sa.text(f"ALTER TABLE {leases.name} ADD COLUMN {column} {sql_type}")
                )
        if version < SCHEMA_VERSION:
            connection.execute(
                sa.update(meta)
                .where(meta.c.key == "schema_version")
                .values(value=str(SCHEMA_VERSION))
            )
