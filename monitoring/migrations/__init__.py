"""The prediction log's schema migrations (Alembic), applied when the database is opened.

`upgrade(engine)` brings a database to the schema of `monitoring.schema`: an empty one gets
every table, one made before migrations existed is stamped with the first revision, then
every later revision runs. One process migrates at a time (a file lock for SQLite, an
advisory lock for PostgreSQL): a BentoML service opens the log from several processes at once.

A change to `monitoring.schema` comes with a revision in `versions/` (numbered, its
`down_revision` the one before); `tests/unit/test_migrations.py` fails while the migrated
schema and `monitoring.schema` differ. To draft one from the difference:
`alembic -c monitoring/migrations/alembic.ini revision --autogenerate -m "what"`.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, inspect, text

FIRST = "0001"
HERE = Path(__file__).parent
_ADVISORY_KEY = 0x696D677365727665  # "imgserve": the PostgreSQL lock of this schema


def config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for this folder, on `connection` when given."""
    found = Config()
    found.set_main_option("script_location", str(HERE))
    if connection is not None:
        found.attributes["connection"] = connection
    return found


def current(connection: Connection) -> str | None:
    """The revision a database is at (None: never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Migrate the database to the newest revision, one process at a time."""
    with _exclusive(engine), engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_KEY})
        alembic = config(connection)
        if current(connection) is None and inspect(connection).has_table("predictions"):
            command.stamp(alembic, FIRST)  # made by the schema before it had migrations
        command.upgrade(alembic, "head")


@contextlib.contextmanager
def _exclusive(engine: Engine) -> Iterator[None]:
    """A file lock beside an SQLite database (nothing for a server database: its transaction
    takes an advisory lock)."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
