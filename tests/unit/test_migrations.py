"""The prediction log's migrations make the schema `monitoring.schema` declares, from nothing
and from a database made before a revision, one process at a time."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from monitoring import migrations
from monitoring.schema import metadata
from monitoring.store import open_database


def test_a_new_database_gets_exactly_the_declared_schema(tmp_path: Path) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'log.db'}")
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []
        heads = migrations.config().get_main_option("script_location")
        assert heads and migrations.current(connection) == _head()


def _head() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(migrations.config()).get_current_head()
    assert head is not None
    return head


def test_a_database_made_before_migrations_is_upgraded_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as connection:  # the first schema, as create_all made it: no stamp
        command.upgrade(migrations.config(connection), migrations.FIRST)
        connection.execute(text("DROP TABLE alembic_version"))
        connection.execute(
            text(
                "INSERT INTO predictions (at, request_id, image_index, model, variant, version,"
                " backend, outcome, latency_ms) VALUES (1, 'r', 0, 'digits', 'fp32', 1,"
                " 'onnxruntime', 'ok', 2.5)"
            )
        )
    engine.dispose()
    upgraded = open_database(url)
    with upgraded.connect() as connection:
        columns = {c["name"] for c in inspect(connection).get_columns("predictions")}
        assert {"shadow_version", "shadow_agreed"} <= columns
        assert connection.execute(text("SELECT request_id FROM predictions")).scalar() == "r"
        assert migrations.current(connection) == _head()


def _open(url: str) -> None:
    open_database(url).dispose()


def test_processes_opening_a_new_database_at_once_migrate_it_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_open, args=(url,)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [p.exitcode for p in processes] == [0, 0, 0, 0]
    with create_engine(url).connect() as connection:
        assert migrations.current(connection) == _head()
