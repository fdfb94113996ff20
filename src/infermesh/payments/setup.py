"""Building a gateway's USDC top-ups (service and watcher) from its settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from infermesh.billing.ledger import CreditLedger
from infermesh.config import Settings
from infermesh.errors import ConfigError
from infermesh.payments.chain import Web3Chain
from infermesh.payments.deposits import DepositService
from infermesh.payments.lease import WatcherLease
from infermesh.payments.networks import resolve_network
from infermesh.payments.records import DepositOptions
from infermesh.payments.transfers import parse_address
from infermesh.payments.watcher import DepositWatcher
from infermesh.store.database import Database

logger = logging.getLogger(__name__)

WATCHER_LEASE = "deposits"


@dataclass
class PaymentParts:
    """A gateway's deposit service and its watcher (with the task that runs it)."""

    service: DepositService
    watcher: DepositWatcher
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching the chain in the background."""
        self.task = asyncio.create_task(self.watcher.run())

    async def stop(self) -> None:
        """Stop watching, give the lease back, close the node's connection."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.watcher.close()


def deposit_options(settings: Settings) -> DepositOptions:
    """The deposit rules ``INFERMESH_PAYMENTS_*`` set; :class:`ConfigError` if wrong."""
    network = resolve_network(settings)
    try:
        usdc = parse_address(network.usdc_address or "")
        treasury = parse_address(settings.payments_treasury or "")
    except ValueError as exc:
        raise ConfigError(f"INFERMESH_PAYMENTS_USDC_ADDRESS / _TREASURY: {exc}") from None
    return DepositOptions(
        chain_id=network.chain_id,
        usdc=usdc,
        treasury=treasury,
        confirmations=settings.payments_confirmations,
        min_deposit=settings.payments_min_deposit,
        claim_ttl=timedelta(seconds=settings.payments_claim_ttl),
        usdc_name=network.usdc_name,
        usdc_version=network.usdc_version,
    )


def build_payments(
    settings: Settings, database: Database, ledger: CreditLedger
) -> PaymentParts | None:
    """USDC top-ups, when a node, the token and the treasury are configured; else None."""
    if not settings.payments_enabled:
        named = (settings.payments_rpc_url, settings.payments_usdc_address)
        if any(named) or settings.payments_treasury:
            logger.warning(
                "USDC top-ups are off: set INFERMESH_PAYMENTS_RPC_URL, "
                "INFERMESH_PAYMENTS_USDC_ADDRESS (or _NETWORK) and INFERMESH_PAYMENTS_TREASURY "
                "together"
            )
        return None
    options = deposit_options(settings)
    assert settings.payments_rpc_url is not None  # payments_enabled says so
    service = DepositService(database, ledger, Web3Chain(settings.payments_rpc_url), options)
    interval = settings.payments_poll_interval
    lease = WatcherLease(
        database,
        name=WATCHER_LEASE,
        owner=f"gw_{secrets.token_hex(8)}",
        duration=timedelta(seconds=max(5 * interval, 10.0)),
    )
    return PaymentParts(service, DepositWatcher(service, lease, interval=interval))
