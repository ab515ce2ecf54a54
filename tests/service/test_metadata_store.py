"""The metadata store on SQLite and on PostgreSQL: the schema Alembic makes is the models' schema,
databases of earlier releases are brought forward, replicas migrate and number versions safely,
aliases and jobs read back what was written."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import subprocess
import sys
import threading
import tomllib
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from reparam_core.deploy import ServingOptions
from service.cli import add_db_command
from service.store import MetadataStore, schema
from service.store.metadata import LATER_DEFAULTS, _Base, serving_digest
from tests.helpers import ROOT

pytestmark = pytest.mark.databases
DEFAULTS = ServingOptions().model_dump(mode="json")


def together(work: Callable[[int], Any], count: int) -> list[Any]:
    """``work(i)`` for i < count in threads released at once; the results (or the exceptions)."""
    start, results = threading.Barrier(count), [None] * count

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = work(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def schema_differences(engine: sa.Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(compare_metadata(MigrationContext.configure(connection), _Base.metadata))


def first_release_tables(engine: sa.Engine, serving_column: bool = False) -> None:
    """The tables as the first release created them (``create_all`` of its models), optionally
    with the ``serving`` column a later release added at start-up before migrations existed."""
    old = sa.MetaData()
    sa.Table(
        "versions",
        old,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), index=True, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("digest", sa.String(64), index=True, nullable=False),
        sa.Column("checkpoint_sha256", sa.String(64), nullable=False),
        sa.Column("spec_sha256", sa.String(64), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("report", sa.JSON, nullable=False),
        sa.Column("timings", sa.JSON, nullable=False),
        *([sa.Column("serving", sa.JSON, nullable=True)] if serving_column else []),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("name", "version"),
    )
    sa.Table(
        "jobs",
        old,
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    old.create_all(engine)
    moment = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    row = {"name": "old", "digest": "d" * 64, "checkpoint_sha256": "c", "spec_sha256": "s"}
    row |= {"spec": {}, "report": {"arch": "RepVGG"}, "timings": {}, "created_at": moment}
    with engine.begin() as connection:
        versions, jobs = old.tables["versions"], old.tables["jobs"]
        # v1 and v2: the same conversion twice (a race before the unique index existed)
        twice = [{**row, "id": 1, "version": 1}, {**row, "id": 2, "version": 2}]
        connection.execute(sa.insert(versions), twice)
        connection.execute(
            sa.insert(jobs),
            [{"id": "j", "name": "old", "status": "running", "created_at": moment, "updated_at": moment}],
        )


def test_a_new_database_gets_exactly_the_models_schema(database_url: str) -> None:
    store = MetadataStore(database_url)
    assert schema_differences(store.engine) == []
    with store.engine.connect() as connection:
        assert schema.current(connection) == schema.head()
    assert MetadataStore(database_url).versions() == []  # a second start finds nothing to do


@pytest.mark.parametrize("serving_column", [False, True], ids=["first-release", "with-serving"])
def test_a_database_from_before_migrations_is_brought_forward(
    database_url: str, serving_column: bool
) -> None:
    first_release_tables(sa.create_engine(database_url), serving_column)
    store = MetadataStore(database_url)
    assert schema_differences(store.engine) == []
    v1, v2 = store.versions("old")
    assert v1.serving == v2.serving == DEFAULTS and v1.created_at == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert store.find_duplicate("old", "c", "s", DEFAULTS) == v1  # the first of the old duplicates
    again, created = store.add_version("old", "d" * 64, "c", "s", {}, {}, {}, DEFAULTS)
    assert not created and again == v1
    new, created = store.add_version("old", "e" * 64, "c2", "s", {}, {}, {}, DEFAULTS)
    assert created and new.version == 3
    job = store.get_job("j")  # it ran in a process of that release: nothing can run it now
    assert job is not None and job.status == "failed" and job.result is not None
    assert job.result["status"] == 503 and "interrupted" in job.result["detail"]
    assert job.stage is None and job.stages == {} and job.attempts == 0


def test_migrating_at_start_can_be_left_to_reparam_db_upgrade(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    first_release_tables(sa.create_engine(database_url))
    with pytest.raises(
        schema.SchemaOutOfDate, match=f"at schema revision 0001, this release needs {schema.head()}"
    ):
        MetadataStore(database_url, migrate=False)
    parser = argparse.ArgumentParser(prog="reparam")
    add_db_command(parser.add_subparsers())
    for argv in (["db", "current"], ["db", "upgrade"], ["db", "upgrade"], ["db", "current"]):
        args = parser.parse_args([*argv, "--url", database_url])
        assert args.run(args) == 0
    printed = capsys.readouterr().out.splitlines()
    head = schema.head()
    assert printed == [
        f"database 0001, this release {head}",
        f"schema 0001 -> {head}",
        f"schema already at {head}",
        f"database {head}, this release {head}",
    ]
    assert [v.version for v in MetadataStore(database_url, migrate=False).versions()] == [1, 2]


def test_the_revisions_go_down_and_up_again(database_url: str) -> None:
    """A release rolled back takes its schema change back (``alembic downgrade``) and loses nothing
    the older release had."""
    store = MetadataStore(database_url)
    store.add_version("m", "d" * 64, "c", "s", {}, {}, {}, DEFAULTS)
    store.create_job("a" * 32, "m", {"name": "m"})
    with store.engine.begin() as connection:
        command.downgrade(schema._config(connection), "0002")
    assert {c["name"] for c in sa.inspect(store.engine).get_columns("jobs")} == {
        *("id", "name", "status", "result", "created_at", "updated_at", "stage", "stages")
    }
    store.engine.dispose()
    store = MetadataStore(database_url)
    assert schema_differences(store.engine) == []
    job = store.get_job("a" * 32)  # queued by the release rolled back to: it cannot be run now
    assert job is not None and job.status == "failed" and job.request is None
    assert store.claim_job("r", 30, 2) is None
    with store.engine.begin() as connection:
        command.downgrade(schema._config(connection), "0001")
    present = sa.inspect(store.engine)
    assert set(present.get_table_names()) == {"alembic_version", "versions", "jobs"}
    assert "serving" not in {c["name"] for c in present.get_columns("versions")}
    store.engine.dispose()
    again = MetadataStore(database_url)
    assert schema_differences(again.engine) == []
    assert [(v.name, v.version, v.serving) for v in again.versions()] == [("m", 1, DEFAULTS)]


def test_reparam_db_is_a_command_of_the_cli() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["reparam.commands"]["db"] == "service.cli:add_db_command"


def test_an_empty_database_is_refused_without_migrating(database_url: str) -> None:
    with pytest.raises(schema.SchemaOutOfDate, match="revision none"):
        MetadataStore(database_url, migrate=False)


def test_replicas_starting_together_migrate_once(database_url: str) -> None:
    """Three processes migrate one empty database at once: one migrates, the others find it done."""
    code = (
        "import sys, sqlalchemy; from service.store import schema; "
        "print(schema.upgrade(sqlalchemy.create_engine(sys.argv[1]))[0])"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", code, database_url]
    replicas = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    befores = sorted(process.communicate(timeout=120)[0].strip() for process in replicas)
    assert [process.returncode for process in replicas] == [0, 0, 0]
    assert befores == sorted(["None", schema.head(), schema.head()])
    assert schema_differences(sa.create_engine(database_url)) == []


def test_concurrent_conversions_get_distinct_numbers_and_one_version_each(database_url: str) -> None:
    store = MetadataStore(database_url)

    def add(i: int) -> tuple[int, bool]:
        record, created = store.add_version("m", "d" * 64, f"c{i % 4}", "s", {}, {}, {}, DEFAULTS)
        return record.version, created

    results = together(add, 8)  # four conversions, each posted twice at once
    assert all(isinstance(r, tuple) for r in results), results
    created = sorted(number for number, new in results if new)
    assert created == [1, 2, 3, 4] and {number for number, _ in results} == {1, 2, 3, 4}
    store.delete_version("m", 4)
    assert store.add_version("m", "e" * 64, "c9", "s", {}, {}, {}, DEFAULTS)[0].version == 5


def test_aliases_move_and_are_recorded(database_url: str) -> None:
    store = MetadataStore(database_url)
    for i in range(2):
        store.add_version("m", "d" * 64, f"c{i}", "s", {}, {}, {}, DEFAULTS)
    assert store.set_alias("m", "prod", 3, "alice") is None  # no such version
    alias, previous = store.set_alias("m", "prod", 1, "alice")  # type: ignore[misc]
    assert previous is None and alias.version == 1 and alias.moved_at.tzinfo is not None
    assert store.set_alias("m", "prod", 2, "bob")[1] == 1  # type: ignore[index]
    assert store.alias_version("m", "prod") == 2
    assert store.delete_version("m", 2) is not None  # the alias goes with it, as a move
    assert store.aliases("m") == {}
    moves = [(m.from_version, m.to_version, m.moved_by) for m in store.alias_history("m", "prod")]
    assert moves == [(None, 1, "alice"), (1, 2, "bob"), (2, None, "deleting v2")]


def test_every_serving_option_added_since_the_first_release_leaves_the_digest_at_its_default() -> None:
    """A serving option added later must not change the digest of a request that leaves it at its
    default: else an identical conversion no longer finds the version an older release stored."""
    revision = importlib.import_module("service.store.migrations.versions.0004_canonical_serving_digests")
    added = {k: v for k, v in DEFAULTS.items() if k not in revision.FIRST_RELEASE_DEFAULTS}
    assert LATER_DEFAULTS == added == revision.AFTER
    assert serving_digest(DEFAULTS) == serving_digest(revision.FIRST_RELEASE_DEFAULTS)


def test_revision_0004_makes_stored_digests_canonical_and_keeps_the_first_of_duplicates(
    database_url: str,
) -> None:
    store = MetadataStore(database_url)
    with store.engine.begin() as connection:
        command.downgrade(schema._config(connection), "0003")
    before_int8 = {k: v for k, v in DEFAULTS.items() if not k.startswith("int8_")}
    store.add_version("m", "d" * 64, "c", "s", {}, {}, {}, before_int8)  # a release before INT8
    with store.engine.begin() as connection:  # the same conversion, stored by the INT8 release
        connection.execute(
            sa.text(
                "INSERT INTO versions (name, version, digest, checkpoint_sha256, spec_sha256, spec, report,"
                " timings, serving, serving_sha256, created_at) SELECT name, 2, digest, checkpoint_sha256,"
                " spec_sha256, spec, report, timings, :serving, :digest, created_at FROM versions"
            ),
            {"serving": json.dumps(DEFAULTS), "digest": "0" * 64},
        )
        connection.execute(sa.text("UPDATE models SET last_version = 2"))
        command.upgrade(schema._config(connection), "head")
    store.engine.dispose()
    store = MetadataStore(database_url)
    found = store.find_duplicate("m", "c", "s", DEFAULTS)
    assert found is not None and found.version == 1
    assert store.find_duplicate("m", "c", "s", before_int8) == found
    with store.engine.connect() as connection:
        digests = connection.execute(sa.text("SELECT version, serving_sha256 FROM versions")).all()
    assert sorted(digests) == [(1, serving_digest(DEFAULTS)), (2, None)]
    store.engine.dispose()
