"""Building a gateway's channels from its settings."""

from __future__ import annotations

from datetime import timedelta

from infermesh.channels.notify import ChannelNotifier, RedisChannelNotifier
from infermesh.channels.service import ChannelOptions, ChannelService
from infermesh.config import Settings
from infermesh.limits.store import LimitStore
from infermesh.store.database import Database

RECHECK_NOTIFIED = 5.0
"""Seconds between a waiter's looks at the database when posts wake it (one gateway,
or Redis shared by all)."""
RECHECK_POLLING = 1.0
"""The same when other gateways' posts can only be seen in the shared database."""


def build_channels(settings: Settings, database: Database, limits: LimitStore) -> ChannelService:
    """Channels on ``database``, posts counted in ``limits``, waiters woken through Redis
    when it is configured."""
    notifier: ChannelNotifier
    if settings.redis_url:
        notifier = RedisChannelNotifier(
            settings.redis_url,
            prefix=settings.redis_prefix,
            recheck=RECHECK_NOTIFIED,
            timeout=settings.redis_timeout,
        )
    else:
        shared = database.dialect == "postgresql"
        notifier = ChannelNotifier(recheck=RECHECK_POLLING if shared else RECHECK_NOTIFIED)
    options = ChannelOptions(
        max_content=settings.channel_max_content,
        max_metadata=settings.channel_max_metadata,
        posts_per_minute=settings.channel_posts_per_minute,
        retention=settings.channel_retention,
        max_age=timedelta(seconds=settings.channel_max_age),
        max_owned=settings.channel_max_owned,
        max_wait=settings.channel_max_wait,
        max_followers=settings.channel_max_followers,
    )
    return ChannelService(database, limits, notifier, options, prefix=settings.redis_prefix)
