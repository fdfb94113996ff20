"""Usage records say which API a request came through (``endpoint``).

Revision ID: 0012_usage_endpoint
Revises: 0011_channels
Create Date: 2025-01-12 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_usage_endpoint"
down_revision: str | None = "0011_channels"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(
            sa.Column("endpoint", sa.String(32), nullable=False, server_default="chat.completions")
        )


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("endpoint")
