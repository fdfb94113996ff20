"""Relayed top-ups and operator payouts: the transactions the gateway sends, the permits
accounts post, operators' payout wallets and their payouts.

``chain_txs`` holds each transaction signed by the relayer or the treasury, stored
before it is broadcast (one per sender and nonce); ``permit_topups`` holds each permit
posted (once per owner and permit nonce); ``payout_wallets`` binds an operator account
to the wallet it is paid to; ``payouts`` holds each transfer to one.

Revision ID: 0009_relayer_payouts
Revises: 0008_deposits
Create Date: 2025-01-09 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_relayer_payouts"
down_revision: str | None = "0008_deposits"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _time(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _account(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["account_id"],
        ["accounts.id"],
        name=op.f(f"fk_{table}_account_id_accounts"),
        ondelete="CASCADE",
    )


def _create_chain_txs() -> None:
    op.create_table(
        "chain_txs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("sender", sa.String(42), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("to_address", sa.String(42), nullable=False),
        sa.Column("raw_tx", sa.Text(), nullable=False),
        sa.Column("tx_hash", sa.String(66), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("stale_since_block", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.String(500), nullable=True),
        _time("created_at"),
        _time("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chain_txs")),
        sa.UniqueConstraint("chain_id", "sender", "nonce", name=op.f("uq_chain_txs_chain_id")),
        sa.UniqueConstraint("chain_id", "tx_hash", name="uq_chain_txs_chain_id_tx_hash"),
    )
    op.create_index(op.f("ix_chain_txs_status"), "chain_txs", ["status"])


def _create_permit_topups() -> None:
    op.create_table(
        "permit_topups",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("owner", sa.String(42), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("deadline", sa.BigInteger(), nullable=False),
        sa.Column("claim_id", sa.Integer(), nullable=False),
        _time("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_permit_topups")),
        sa.UniqueConstraint("chain_id", "owner", "nonce", name=op.f("uq_permit_topups_chain_id")),
        sa.ForeignKeyConstraint(
            ["claim_id"],
            ["deposit_claims.id"],
            name=op.f("fk_permit_topups_claim_id_deposit_claims"),
            ondelete="CASCADE",
        ),
        _account("permit_topups"),
    )
    op.create_index(op.f("ix_permit_topups_account_id"), "permit_topups", ["account_id"])


def _create_payout_wallets() -> None:
    op.create_table(
        "payout_wallets",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(42), nullable=False),
        _time("bound_at"),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_payout_wallets")),
        _account("payout_wallets"),
    )


def _create_payouts() -> None:
    op.create_table(
        "payouts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("address", sa.String(42), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("tx_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.String(500), nullable=True),
        _time("created_at"),
        _time("updated_at"),
        _time("paid_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payouts")),
        sa.UniqueConstraint("tx_id", name=op.f("uq_payouts_tx_id")),
        sa.ForeignKeyConstraint(
            ["tx_id"], ["chain_txs.id"], name=op.f("fk_payouts_tx_id_chain_txs")
        ),
        _account("payouts"),
    )
    op.create_index(op.f("ix_payouts_account_id"), "payouts", ["account_id"])
    op.create_index(op.f("ix_payouts_status"), "payouts", ["status"])


def upgrade() -> None:
    """Create ``chain_txs``, ``permit_topups``, ``payout_wallets`` and ``payouts``; mark
    the deposit claims of relayed transactions."""
    with op.batch_alter_table("deposit_claims") as batch:
        batch.add_column(
            sa.Column("relayed", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    _create_chain_txs()
    _create_permit_topups()
    _create_payout_wallets()
    _create_payouts()


def downgrade() -> None:
    """Drop ``payouts``, ``payout_wallets``, ``permit_topups`` and ``chain_txs``."""
    op.drop_table("payouts")
    op.drop_table("payout_wallets")
    op.drop_table("permit_topups")
    op.drop_table("chain_txs")
    with op.batch_alter_table("deposit_claims") as batch:
        batch.drop_column("relayed")
