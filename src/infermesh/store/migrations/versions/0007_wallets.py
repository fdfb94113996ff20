"""Wallet sign-in (EIP-4361): the nonces handed out, and the wallets bound to accounts.

``wallet_nonces`` holds each nonce until it expires: a sign-in consumes one by setting
``used_at`` (once), and expired rows are deleted as new ones are made. ``wallets`` binds
a wallet address (lowercase hex) to the one account its first sign-in created.

Revision ID: 0007_wallets
Revises: 0006_async_jobs
Create Date: 2025-01-07 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_wallets"
down_revision: str | None = "0006_async_jobs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _time(name: str, *, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _create_wallet_nonces() -> None:
    op.create_table(
        "wallet_nonces",
        sa.Column("nonce", sa.String(64), nullable=False),
        _time("created_at", nullable=False),
        _time("expires_at", nullable=False),
        _time("used_at"),
        sa.PrimaryKeyConstraint("nonce", name=op.f("pk_wallet_nonces")),
    )
    op.create_index(op.f("ix_wallet_nonces_expires_at"), "wallet_nonces", ["expires_at"])


def _create_wallets() -> None:
    op.create_table(
        "wallets",
        sa.Column("address", sa.String(42), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        _time("created_at", nullable=False),
        sa.PrimaryKeyConstraint("address", name=op.f("pk_wallets")),
        sa.UniqueConstraint("account_id", name=op.f("uq_wallets_account_id")),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_wallets_account_id_accounts"),
            ondelete="CASCADE",
        ),
    )


def upgrade() -> None:
    """Create ``wallet_nonces`` and ``wallets``."""
    _create_wallet_nonces()
    _create_wallets()


def downgrade() -> None:
    """Drop ``wallets`` and ``wallet_nonces``."""
    op.drop_table("wallets")
    op.drop_table("wallet_nonces")
