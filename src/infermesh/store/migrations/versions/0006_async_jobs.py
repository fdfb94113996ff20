"""Asynchronous chat jobs and the webhook deliveries of their events.

``async_jobs`` is the durable queue: a job is claimed by one gateway under a lease,
and its prompt is kept only until it ends. ``webhook_deliveries`` holds the events to
POST, written in the transaction that ends the job, and goes with it when purged.
``webhook_secrets`` holds each account's signing secret (shown to its owner once).

Revision ID: 0006_async_jobs
Revises: 0005_worker_scope
Create Date: 2025-01-06 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_async_jobs"
down_revision: str | None = "0005_worker_scope"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _time(name: str, *, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _create_async_jobs() -> None:
    op.create_table(
        "async_jobs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("request", sa.Text(), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.String(500), nullable=True),
        sa.Column("retries", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("hold_id", sa.String(100), nullable=True),
        sa.Column("held", sa.BigInteger(), nullable=False, server_default="0"),
        _time("available_at", nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        _time("lease_expires_at"),
        _time("deadline_at"),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("webhook_url", sa.String(2000), nullable=True),
        _time("created_at", nullable=False),
        _time("updated_at", nullable=False),
        _time("started_at"),
        _time("completed_at"),
        _time("purge_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_async_jobs")),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_async_jobs_account_id_accounts"),
            ondelete="CASCADE",
        ),
    )
    # An account's jobs newest first (all, or of one status: also counts its queue);
    # the queue in order; the sweeps (deadlines, purge); the stats' recent completions.
    indexes = {
        "ix_async_jobs_account_created": ["account_id", "created_at", "id"],
        "ix_async_jobs_account_status": ["account_id", "status", "created_at", "id"],
        "ix_async_jobs_status_created": ["status", "created_at", "id"],
        "ix_async_jobs_status_deadline": ["status", "deadline_at"],
        "ix_async_jobs_status_completed": ["status", "completed_at"],
        "ix_async_jobs_purge_at": ["purge_at"],
    }
    for name, columns in indexes.items():
        op.create_index(op.f(name), "async_jobs", columns)


def _create_webhook_deliveries() -> None:
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("status", sa.String(16), nullable=False),
        _time("next_attempt_at", nullable=False),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        _time("lease_expires_at"),
        _time("created_at", nullable=False),
        _time("delivered_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["async_jobs.id"],
            name=op.f("fk_webhook_deliveries_job_id_async_jobs"),
            ondelete="CASCADE",
        ),
    )
    op.create_index(op.f("ix_webhook_deliveries_job_id"), "webhook_deliveries", ["job_id"])
    op.create_index(
        op.f("ix_webhook_deliveries_status_next_attempt"),
        "webhook_deliveries",
        ["status", "next_attempt_at"],
    )


def _create_webhook_secrets() -> None:
    op.create_table(
        "webhook_secrets",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("secret", sa.String(100), nullable=False),
        _time("created_at", nullable=False),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_webhook_secrets")),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_webhook_secrets_account_id_accounts"),
            ondelete="CASCADE",
        ),
    )


def upgrade() -> None:
    """Create ``async_jobs``, ``webhook_deliveries`` and ``webhook_secrets``."""
    _create_async_jobs()
    _create_webhook_deliveries()
    _create_webhook_secrets()


def downgrade() -> None:
    """Drop ``webhook_secrets``, ``webhook_deliveries`` and ``async_jobs``."""
    op.drop_table("webhook_secrets")
    op.drop_table("webhook_deliveries")
    op.drop_table("async_jobs")
