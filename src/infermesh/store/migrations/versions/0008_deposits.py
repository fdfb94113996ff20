"""USDC deposits: the transactions accounts claim, their transfers, and the watcher lease.

``deposit_claims`` holds each transaction hash an account posted (one account per
transaction); ``deposits`` holds each USDC transfer to the treasury found in a claimed
transaction (one row per log), credited once; ``payment_watchers`` holds the lease of
the one gateway that watches the chain.

Revision ID: 0008_deposits
Revises: 0007_wallets
Create Date: 2025-01-08 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_deposits"
down_revision: str | None = "0007_wallets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _time(name: str, *, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _account(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["account_id"],
        ["accounts.id"],
        name=op.f(f"fk_{table}_account_id_accounts"),
        ondelete="CASCADE",
    )


def _create_deposit_claims() -> None:
    op.create_table(
        "deposit_claims",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("tx_hash", sa.String(66), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.String(500), nullable=True),
        _time("created_at", nullable=False),
        _time("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deposit_claims")),
        sa.UniqueConstraint("chain_id", "tx_hash", name=op.f("uq_deposit_claims_chain_id")),
        _account("deposit_claims"),
    )
    op.create_index(op.f("ix_deposit_claims_status"), "deposit_claims", ["status"])
    op.create_index(
        op.f("ix_deposit_claims_account_created"), "deposit_claims", ["account_id", "created_at"]
    )


def _create_deposits() -> None:
    op.create_table(
        "deposits",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("claim_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("tx_hash", sa.String(66), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("from_address", sa.String(42), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("block_hash", sa.String(66), nullable=True),
        sa.Column("confirmations", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("error", sa.String(500), nullable=True),
        _time("created_at", nullable=False),
        _time("updated_at", nullable=False),
        _time("credited_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deposits")),
        sa.UniqueConstraint("chain_id", "tx_hash", "log_index", name=op.f("uq_deposits_chain_id")),
        sa.ForeignKeyConstraint(
            ["claim_id"],
            ["deposit_claims.id"],
            name=op.f("fk_deposits_claim_id_deposit_claims"),
            ondelete="CASCADE",
        ),
        _account("deposits"),
    )
    op.create_index(op.f("ix_deposits_claim_id"), "deposits", ["claim_id"])
    op.create_index(op.f("ix_deposits_account_id"), "deposits", ["account_id"])


def _create_payment_watchers() -> None:
    op.create_table(
        "payment_watchers",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(64), nullable=True),
        _time("lease_expires_at", nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_payment_watchers")),
    )


def upgrade() -> None:
    """Create ``deposit_claims``, ``deposits`` and ``payment_watchers``."""
    _create_deposit_claims()
    _create_deposits()
    _create_payment_watchers()


def downgrade() -> None:
    """Drop ``payment_watchers``, ``deposits`` and ``deposit_claims``."""
    op.drop_table("payment_watchers")
    op.drop_table("deposits")
    op.drop_table("deposit_claims")
