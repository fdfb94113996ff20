"""x402 top-ups: each EIP-3009 authorization an account posted as an x402 payment, once
per payer and authorization nonce, recorded before the relayer's transaction is sent.

Revision ID: 0010_x402
Revises: 0009_relayer_payouts
Create Date: 2025-01-10 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_x402"
down_revision: str | None = "0009_relayer_payouts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``x402_payments``."""
    op.create_table(
        "x402_payments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("payer", sa.String(42), nullable=False),
        sa.Column("nonce", sa.String(66), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("valid_before", sa.BigInteger(), nullable=False),
        sa.Column("claim_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_x402_payments")),
        sa.UniqueConstraint("chain_id", "payer", "nonce", name=op.f("uq_x402_payments_chain_id")),
        sa.ForeignKeyConstraint(
            ["claim_id"],
            ["deposit_claims.id"],
            name=op.f("fk_x402_payments_claim_id_deposit_claims"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_x402_payments_account_id_accounts"),
            ondelete="CASCADE",
        ),
    )
    op.create_index(op.f("ix_x402_payments_account_id"), "x402_payments", ["account_id"])


def downgrade() -> None:
    """Drop ``x402_payments``."""
    op.drop_table("x402_payments")
