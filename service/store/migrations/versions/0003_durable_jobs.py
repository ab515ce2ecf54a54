"""Durable conversion jobs: the request a job carries (any replica can run it), the replica that
claimed it, its heartbeat and the number of claims; an index for the queue's polling.

Jobs an earlier release left queued or running ran in that release's process: nothing can run them
(they carry no request), so they are failed here as that release's start-up would have.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

INTERRUPTED = {
    "status": 503,
    "detail": "interrupted: the service stopped during this conversion; post it again",
}


def upgrade() -> None:
    op.add_column("jobs", sa.Column("request", sa.JSON(), nullable=True))
    op.add_column("jobs", sa.Column("owner", sa.String(128), nullable=True))
    op.add_column("jobs", sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
    op.create_index("jobs_by_status", "jobs", ["status", "created_at"])
    jobs = sa.table("jobs", sa.column("status", sa.String()), sa.column("result", sa.JSON()))
    op.get_bind().execute(
        sa.update(jobs)
        .where(jobs.c.status.in_(("queued", "running")))
        .values(status="failed", result=INTERRUPTED)
    )


def downgrade() -> None:
    """Queued or running jobs cannot be run by the earlier release (it runs jobs in the process
    that took them): it fails them at its start."""
    op.drop_index("jobs_by_status", table_name="jobs")
    for column in ("attempts", "heartbeat_at", "owner", "request"):
        op.drop_column("jobs", column)
