"""Serving digests canonical for every serving option added since the first release: an option at
its default leaves a version's digest as it was before the option existed, as ``runtime: torch``
already did. ``int8_min_agreement`` (0.99) and ``int8_float_layers`` (0) are added to those, so an
identical conversion finds its version whichever release stored it.

Every row's ``serving_sha256`` is computed again. Of duplicates the older digests let in, the
first (by model and version) keeps the digest, the others get NULL, as revision 0002 did (a unique
index lets NULLs repeat; those rows still serve, they are just never found as a duplicate).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# the options left out of the digest at these values (revision 0003, revision 0004)
BEFORE = {"runtime": "torch"}
AFTER = {"runtime": "torch", "int8_min_agreement": 0.99, "int8_float_layers": 0}
FIRST_RELEASE_DEFAULTS = {
    "precision": "fp32",
    "channels_last": True,
    "inference_mode": True,
    "compile": False,
    "compile_mode": "default",
    "warmup_iterations": 2,
}


def _digest(serving: dict[str, Any], later_defaults: dict[str, Any]) -> str:
    canonical = {k: v for k, v in serving.items() if k not in later_defaults or v != later_defaults[k]}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _recompute(later_defaults: dict[str, Any]) -> None:
    bind = op.get_bind()
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
    rows = list(bind.execute(sa.select(versions).order_by(versions.c.name, versions.c.version)).mappings())
    bind.execute(sa.update(versions).values(serving_sha256=None))  # none collides while they change
    seen: set[tuple[str, str, str, str]] = set()
    for row in rows:
        digest = _digest(row["serving"] or FIRST_RELEASE_DEFAULTS, later_defaults)
        key = (row["name"], row["checkpoint_sha256"], row["spec_sha256"], digest)
        if key not in seen:
            seen.add(key)
            bind.execute(sa.update(versions).where(versions.c.id == row["id"]).values(serving_sha256=digest))


def upgrade() -> None:
    _recompute(AFTER)


def downgrade() -> None:
    _recompute(BEFORE)
