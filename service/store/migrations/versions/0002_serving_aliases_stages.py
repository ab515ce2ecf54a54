"""Everything added up to the first Alembic revision: serving options per version and their digest
(one version per conversion: a unique index), the ``models`` numbering, aliases and their moves, the
stages of a job.

Databases made before migrations existed were brought forward piece by piece at start-up, so one
may hold any part of this already: each step checks what is there (a new database gets all of it).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from reparam_core.deploy import ServingOptions
from service.store.metadata import serving_digest

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# every one nullable: rows written before it read NULL
ADDED_COLUMNS: dict[str, tuple[tuple[str, sa.types.TypeEngine[Any]], ...]] = {
    "versions": (("serving", sa.JSON()), ("serving_sha256", sa.String(64))),
    "jobs": (("stage", sa.String(16)), ("stages", sa.JSON())),
}


def upgrade() -> None:
    bind = op.get_bind()
    present = sa.inspect(bind)
    tables = set(present.get_table_names())
    for table, columns in ADDED_COLUMNS.items():
        have = {c["name"] for c in present.get_columns(table)}
        for name, kind in columns:
            if name not in have:
                op.add_column(table, sa.Column(name, kind, nullable=True))
    _fill_serving_digests(bind)
    if "one_version_per_conversion" not in {i["name"] for i in present.get_indexes("versions")}:
        op.create_index(
            "one_version_per_conversion",
            "versions",
            ["name", "checkpoint_sha256", "spec_sha256", "serving_sha256"],
            unique=True,
        )
    if "models" not in tables:
        op.create_table(
            "models",
            sa.Column("name", sa.String(64), primary_key=True),
            sa.Column("last_version", sa.Integer(), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        )
    if "aliases" not in tables:
        op.create_table(
            "aliases",
            sa.Column("name", sa.String(64), primary_key=True),
            sa.Column("alias", sa.String(64), primary_key=True),
            sa.Column("version", sa.Integer(), nullable=False),
            sa.Column("moved_by", sa.String(64), nullable=False),
            sa.Column("moved_at", sa.DateTime(timezone=True), nullable=False),
        )
    if "alias_moves" not in tables:
        op.create_table(
            "alias_moves",
            sa.Column("id", sa.Integer(), primary_key=True),
            sa.Column("name", sa.String(64), nullable=False),
            sa.Column("alias", sa.String(64), nullable=False),
            sa.Column("from_version", sa.Integer(), nullable=True),
            sa.Column("to_version", sa.Integer(), nullable=True),
            sa.Column("moved_by", sa.String(64), nullable=False),
            sa.Column("moved_at", sa.DateTime(timezone=True), nullable=False),
        )
        op.create_index("alias_moves_by_alias", "alias_moves", ["name", "alias"])


def _fill_serving_digests(bind: sa.Connection) -> None:
    """Rows stored before ``serving_sha256`` get the digest of their options (none stored: the
    defaults); of duplicates an old race created, the first keeps it, the others stay NULL (a
    unique index lets NULLs repeat)."""
    versions = sa.table(
        "versions",
        sa.column("id", sa.Integer()),
        sa.column("name", sa.String()),
        sa.column("version", sa.Integer()),
        sa.column("checkpoint_sha256", sa.String()),
        sa.column("spec_sha256", sa.String()),
        sa.column("serving", sa.JSON()),
        sa.column("serving_sha256", sa.String()),
    )
    rows = bind.execute(sa.select(versions).order_by(versions.c.name, versions.c.version)).mappings()
    seen: set[tuple[str, str, str, str]] = set()
    defaults = ServingOptions().model_dump(mode="json")
    for row in list(rows):
        digest = row["serving_sha256"]
        if digest is None:
            candidate = serving_digest(row["serving"] or defaults)
            key = (row["name"], row["checkpoint_sha256"], row["spec_sha256"], candidate)
            if key not in seen:
                bind.execute(
                    sa.update(versions).where(versions.c.id == row["id"]).values(serving_sha256=candidate)
                )
                digest = candidate
        seen.add((row["name"], row["checkpoint_sha256"], row["spec_sha256"], digest or ""))


def downgrade() -> None:
    op.drop_table("alias_moves")
    op.drop_table("aliases")
    op.drop_table("models")
    op.drop_index("one_version_per_conversion", table_name="versions")
    for table, columns in ADDED_COLUMNS.items():
        for name, _ in columns:
            op.drop_column(table, name)
