"""Building the account services (accounts and keys, wallet sign-in) a process's settings
describe."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from infermesh.accounts.key_cache import KeyCache
from infermesh.accounts.service import AccountService
from infermesh.config import Settings
from infermesh.store.database import Database

if TYPE_CHECKING:
    from infermesh.accounts.wallets import WalletSignIn


def build_accounts(settings: Settings, database: Database, *, cache_keys: bool) -> AccountService:
    """The account service of a gateway (``cache_keys``) or of a CLI command.

    A gateway caches keys for ``key_cache_ttl`` seconds (unless it is 0). With a Redis
    URL, every key change is announced on the key channel, and a gateway applies the
    changes announced there (see :meth:`AccountService.keep_keys_fresh`); a CLI command
    without the URL announces nothing, and gateways see its changes within their TTL.
    """
    cache = None
    if cache_keys and settings.key_cache_ttl > 0:
        cache = KeyCache(ttl=settings.key_cache_ttl, size=settings.key_cache_size)
    if not settings.redis_url:
        return AccountService(database, key_cache=cache)
    from infermesh.accounts.key_channel import KeyChannel  # only Redis users load redis

    channel = KeyChannel(
        settings.redis_url, prefix=settings.redis_prefix, timeout=settings.redis_timeout
    )
    return AccountService(database, key_cache=cache, channel=channel)


def build_wallets(settings: Settings, database: Database, accounts: AccountService) -> WalletSignIn:
    """Wallet sign-in as ``settings`` configure it (``INFERMESH_WALLET_*``)."""
    # Imported here: eth-account takes about a second to import, which every command
    # line run would pay for (only a gateway signs wallets in).
    from infermesh.accounts.wallets import WalletOptions, WalletSignIn

    options = WalletOptions(
        domain=settings.resolved_wallet_domain,
        chain_ids=tuple(settings.wallet_chain_ids),
        nonce_ttl=timedelta(seconds=settings.wallet_nonce_ttl),
        max_nonces=settings.wallet_max_nonces,
        tier=settings.wallet_tier,
    )
    return WalletSignIn(database, accounts, options)
