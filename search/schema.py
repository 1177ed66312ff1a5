"""resnet-hpo's own tables, next to Optuna's in the same database.

``resnet_hpo_meta`` holds the schema version of these tables, so that a database written by
a newer, incompatible resnet-hpo is refused with a message instead of misread.
"""

from __future__ import annotations

import sqlalchemy as sa

from search.errors import StorageError

SCHEMA_VERSION = 1

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
)


def stored_schema_version(connection: sa.Connection) -> int | None:
    if not sa.inspect(connection).has_table(meta.name):
        return None
    value = connection.execute(
        sa.select(meta.c.value).where(meta.c.key == "schema_version")
    ).scalar()
    return int(value) if value is not None else None


def check_schema(connection: sa.Connection, url: str) -> None:
    version = stored_schema_version(connection)
    if version is not None and version != SCHEMA_VERSION:
        raise StorageError(
            f"storage {url} was written by a resnet-hpo with schema version {version}; this "
            f"resnet-hpo reads version {SCHEMA_VERSION}. Use the resnet-hpo version that made "
            "it, or start a new database."
        )


def ensure_schema(engine: sa.Engine, url: str) -> None:
    """Create our tables if missing (writers only), after checking the version."""
    with engine.begin() as connection:
        check_schema(connection, url)
        metadata.create_all(connection)
        if stored_schema_version(connection) is None:
            connection.execute(
                sa.insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION))
            )
