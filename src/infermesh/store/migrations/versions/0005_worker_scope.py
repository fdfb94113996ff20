"""Worker tokens carry a scope; token counts, latencies and job counts are 64-bit.

``workers`` gains ``max_connections`` (live connections of one token), ``max_slots``
(job slots one connection may announce over all its models) and ``allowed_models``
(catalog models the token may serve; NULL: any). ``usage_records.prompt_tokens``,
``completion_tokens`` and ``latency_ms`` and ``workers.jobs_served``/``jobs_failed``
become BIGINT (INTEGER is 32-bit on PostgreSQL). SQLite gets its tables rebuilt by
Alembic's batch mode.

Revision ID: 0005_worker_scope
Revises: 0004_rate_limits
Create Date: 2025-01-05 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_worker_scope"
down_revision: str | None = "0004_rate_limits"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WIDENED = {
    "workers": ("jobs_served", "jobs_failed"),
    "usage_records": ("prompt_tokens", "completion_tokens", "latency_ms"),
}
_SERVER_DEFAULTS = {"jobs_served": "0", "jobs_failed": "0"}


def _retype(table: str, old: sa.types.TypeEngine[int], new: sa.types.TypeEngine[int]) -> None:
    with op.batch_alter_table(table) as batch:
        for column in _WIDENED[table]:
            batch.alter_column(
                column,
                existing_type=old,
                type_=new,
                existing_nullable=False,
                existing_server_default=_SERVER_DEFAULTS.get(column),
            )


def upgrade() -> None:
    """Add the scope columns to ``workers``; widen the counters to BIGINT."""
    with op.batch_alter_table("workers") as batch:
        batch.add_column(
            sa.Column("max_connections", sa.Integer(), nullable=False, server_default="2")
        )
        batch.add_column(sa.Column("max_slots", sa.Integer(), nullable=False, server_default="64"))
        batch.add_column(sa.Column("allowed_models", sa.JSON(), nullable=True))
    for table in _WIDENED:
        _retype(table, sa.Integer(), sa.BigInteger())


def downgrade() -> None:
    """Drop the scope columns; narrow the counters back to INTEGER."""
    for table in _WIDENED:
        _retype(table, sa.BigInteger(), sa.Integer())
    with op.batch_alter_table("workers") as batch:
        for column in ("allowed_models", "max_slots", "max_connections"):
            batch.drop_column(column)
