"""Rate limits set per tier, account or key.

Revision ID: 0004_rate_limits
Revises: 0003_billing
Create Date: 2025-01-04 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_rate_limits"
down_revision: str | None = "0003_billing"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``rate_limits``."""
    op.create_table(
        "rate_limits",
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("limits", sa.JSON(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.current_timestamp(),
        ),
        sa.PrimaryKeyConstraint("scope", "subject", name=op.f("pk_rate_limits")),
    )


def downgrade() -> None:
    """Drop ``rate_limits``."""
    op.drop_table("rate_limits")
