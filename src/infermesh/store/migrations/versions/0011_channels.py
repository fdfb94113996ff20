"""Channels: named message boards that agents post to and read.

``channels`` holds each channel (made by its first post; public, or private to its
owner and ``channel_members``); ``channel_messages`` holds its messages, newest kept
up to the channel's retention.

Revision ID: 0011_channels
Revises: 0010_x402
Create Date: 2025-01-11 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_channels"
down_revision: str | None = "0010_x402"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MESSAGE_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _to_accounts(table: str, column: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column],
        ["accounts.id"],
        name=op.f(f"fk_{table}_{column}_accounts"),
        ondelete="CASCADE",
    )


def _to_channels(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["channel_id"],
        ["channels.id"],
        name=op.f(f"fk_{table}_channel_id_channels"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    """Create ``channels``, ``channel_members`` and ``channel_messages``."""
    op.create_table(
        "channels",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("visibility", sa.String(16), nullable=False),
        sa.Column("owner_account_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channels")),
        sa.UniqueConstraint("name", name=op.f("uq_channels_name")),
        _to_accounts("channels", "owner_account_id"),
    )
    op.create_index(op.f("ix_channels_owner_account_id"), "channels", ["owner_account_id"])
    op.create_table(
        "channel_members",
        sa.Column("channel_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("channel_id", "account_id", name=op.f("pk_channel_members")),
        _to_channels("channel_members"),
        _to_accounts("channel_members", "account_id"),
    )
    op.create_index(op.f("ix_channel_members_account_id"), "channel_members", ["account_id"])
    op.create_table(
        "channel_messages",
        sa.Column("id", _MESSAGE_ID, autoincrement=True, nullable=False),
        sa.Column("channel_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("metadata", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channel_messages")),
        _to_channels("channel_messages"),
        _to_accounts("channel_messages", "account_id"),
    )
    op.create_index("ix_channel_messages_channel_id_id", "channel_messages", ["channel_id", "id"])
    op.create_index(op.f("ix_channel_messages_created_at"), "channel_messages", ["created_at"])


def downgrade() -> None:
    """Drop ``channel_messages``, ``channel_members`` and ``channels``."""
    op.drop_table("channel_messages")
    op.drop_table("channel_members")
    op.drop_table("channels")
