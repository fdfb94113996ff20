"""Credits: balances, the ledger, holds and usage records.

Revision ID: 0003_billing
Revises: 0002_workers
Create Date: 2025-01-03 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_billing"
down_revision: str | None = "0002_workers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LEDGER_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _created_at() -> sa.Column[object]:
    return sa.Column(
        "created_at",
        sa.DateTime(timezone=True),
        nullable=False,
        server_default=sa.func.current_timestamp(),
    )


def _account_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["account_id"],
        ["accounts.id"],
        name=op.f(f"fk_{table}_account_id_accounts"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    """Create ``balances``, ``ledger_entries``, ``holds`` and ``usage_records``."""
    op.create_table(
        "balances",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("held", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.current_timestamp(),
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_balances")),
        sa.CheckConstraint("balance >= 0", name=op.f("ck_balances_balance_not_negative")),
        sa.CheckConstraint("held >= 0", name=op.f("ck_balances_held_not_negative")),
        _account_fk("balances"),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("id", _LEDGER_ID, nullable=False, autoincrement=True),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("balance_change", sa.BigInteger(), nullable=False),
        sa.Column("held_change", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("held_after", sa.BigInteger(), nullable=False),
        sa.Column("reference", sa.String(100), nullable=False),
        sa.Column("reason", sa.String(500), nullable=True),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
        sa.UniqueConstraint(
            "account_id", "kind", "reference", name=op.f("uq_ledger_entries_account_id")
        ),
        _account_fk("ledger_entries"),
    )
    op.create_index(op.f("ix_ledger_entries_account_id"), "ledger_entries", ["account_id"])
    op.create_table(
        "holds",
        sa.Column("id", sa.String(100), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_holds")),
        _account_fk("holds"),
    )
    op.create_index(op.f("ix_holds_account_id"), "holds", ["account_id"])
    op.create_index(op.f("ix_holds_status"), "holds", ["status"])
    op.create_index(op.f("ix_holds_expires_at"), "holds", ["expires_at"])
    op.create_table(
        "usage_records",
        sa.Column("id", sa.String(100), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.String(200), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("node_id", sa.String(200), nullable=True),
        sa.Column("worker_id", sa.String(32), nullable=True),
        sa.Column("operator_account_id", sa.Integer(), nullable=True),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("finish_reason", sa.String(32), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost", sa.BigInteger(), nullable=False),
        sa.Column("operator_earning", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_records")),
        _account_fk("usage_records"),
    )
    op.create_index(op.f("ix_usage_records_account_id"), "usage_records", ["account_id"])
    op.create_index(op.f("ix_usage_records_worker_id"), "usage_records", ["worker_id"])
    op.create_index(op.f("ix_usage_records_created_at"), "usage_records", ["created_at"])


def downgrade() -> None:
    """Drop the billing tables."""
    for table in ("usage_records", "holds", "ledger_entries", "balances"):
        op.drop_table(table)
