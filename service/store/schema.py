"""The metadata database's schema, kept by Alembic: ``upgrade`` brings a database to the newest
revision (``migrations/versions``), ``require_current`` refuses one that is behind.

A database made before migrations existed (tables, no ``alembic_version``) is first stamped with
the first release's revision; the next revision checks what such a database already has. An
upgrade is one transaction that first takes a lock: an advisory lock on PostgreSQL, the write lock
(``BEGIN IMMEDIATE``) on SQLite. Processes starting together thus migrate one after the other (the
later ones find nothing left to do), and a failed upgrade leaves the database as it was.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, inspect, text
from sqlalchemy.pool import NullPool

MIGRATIONS = Path(__file__).parent / "migrations"
FIRST_RELEASE = "0001"
MIGRATION_LOCK = 0x7265706172616D  # pg_advisory_xact_lock key: "reparam" in ASCII
_ONE_AT_A_TIME = threading.Lock()  # Alembic's ``context`` is process-global


class SchemaOutOfDate(RuntimeError):
    """The database is behind this release's schema and migrating at start is off."""


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


def current(connection: Connection) -> str | None:
    """The database's revision; :data:`FIRST_RELEASE` for one made before migrations existed; None
    for an empty database."""
    revision = MigrationContext.configure(connection).get_current_revision()
    if revision is None and inspect(connection).has_table("versions"):
        return FIRST_RELEASE
    return revision


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Migrate to the newest revision; returns ``(revision before, revision now)``."""
    with _ONE_AT_A_TIME, _locked(engine) as connection:
        before = current(connection)
        config = _config(connection)
        if before == FIRST_RELEASE and MigrationContext.configure(connection).get_current_revision() is None:
            command.stamp(config, FIRST_RELEASE)  # made before migrations: the first release's tables
        command.upgrade(config, "head")
        return before, head()


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that holds the migration lock, committed when the block ends."""
    if engine.dialect.name != "sqlite":
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            yield connection
        return
    # pysqlite begins transactions before DML only: this one is ours, DDL included, lock first
    driver_owns_nothing = {"isolation_level": None, "timeout": 120}
    own = create_engine(engine.url, poolclass=NullPool, connect_args=driver_owns_nothing)
    try:
        with own.connect() as connection:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.exec_driver_sql("ROLLBACK")
                raise
            connection.exec_driver_sql("COMMIT")
    finally:
        own.dispose()


def require_current(engine: Engine) -> None:
    with engine.connect() as connection:
        revision = current(connection)
    if revision != head():
        raise SchemaOutOfDate(
            f"the database is at schema revision {revision or 'none (empty)'}, this release needs "
            f"{head()}: run `reparam db upgrade` (or start with REPARAM_MIGRATE_AT_START=true)"
        )
