"""Alembic's environment: migrations run on the connection `monitoring.migrations` hands it,
or, from the `alembic` command line, on the database the settings name."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from monitoring.schema import metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


given = context.config.attributes.get("connection")
if given is not None:
    _run(given)
else:
    from monitoring.settings import PredictionLogSettings

    engine = create_engine(PredictionLogSettings().url)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()
