"""Building a gateway's USDC payments (deposits, permit and x402 top-ups, payouts and the
watcher that follows them) from its settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from pydantic import SecretStr

from infermesh.billing.ledger import CreditLedger
from infermesh.config import Settings
from infermesh.errors import ConfigError
from infermesh.payments.chain import Web3Chain
from infermesh.payments.deposits import DepositService
from infermesh.payments.lease import WatcherLease
from infermesh.payments.networks import resolve_network
from infermesh.payments.outbox import Outbox, Signer
from infermesh.payments.payouts import PayoutOptions, PayoutService
from infermesh.payments.permits import PermitTopups
from infermesh.payments.records import DepositOptions
from infermesh.payments.transfers import parse_address
from infermesh.payments.watcher import DepositWatcher
from infermesh.payments.x402 import X402Topups
from infermesh.store.database import Database

logger = logging.getLogger(__name__)

WATCHER_LEASE = "deposits"


@dataclass
class PaymentParts:
    """A gateway's USDC payments: deposits by hash, permit top-ups (with a relayer key),
    x402 top-ups (switched on, with a relayer key), operator payouts, the outbox of
    transactions the gateway sends, and the watcher (with the task that runs it)."""

    deposits: DepositService
    outbox: Outbox
    payouts: PayoutService
    watcher: DepositWatcher
    permits: PermitTopups | None = None
    x402: X402Topups | None = None
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
    """USDC payments, when a node, the token and the treasury are configured; else None."""
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
    if settings.payments_x402 and settings.payments_relayer_key is None:
        raise ConfigError(
            "INFERMESH_PAYMENTS_X402 needs INFERMESH_PAYMENTS_RELAYER_KEY: the relayer "
            "settles x402 payments and pays their gas."
        )
    assert settings.payments_rpc_url is not None  # payments_enabled says so
    chain = Web3Chain(settings.payments_rpc_url)
    outbox = Outbox(database, chain, chain_id=options.chain_id, confirmations=options.confirmations)
    deposits = DepositService(database, ledger, chain, options, outbox=outbox)
    payouts = PayoutService(
        database,
        ledger,
        outbox,
        PayoutOptions(options.chain_id, options.usdc, settings.payments_payout_minimum),
        treasury=_signer(settings.payments_treasury_key, "TREASURY_KEY", options.treasury),
    )
    relayer = _signer(settings.payments_relayer_key, "RELAYER_KEY", None)
    permits = None if relayer is None else PermitTopups(database, chain, outbox, relayer, options)
    x402 = None
    if settings.payments_x402 and relayer is not None:
        x402 = X402Topups(database, chain, outbox, relayer, options)
    interval = settings.payments_poll_interval
    lease = WatcherLease(
        database,
        name=WATCHER_LEASE,
        owner=f"gw_{secrets.token_hex(8)}",
        duration=timedelta(seconds=max(5 * interval, 10.0)),
    )
    watcher = DepositWatcher(deposits, lease, interval=interval, outbox=outbox, payouts=payouts)
    return PaymentParts(deposits, outbox, payouts, watcher, permits, x402)


def _signer(key: SecretStr | None, name: str, expected: str | None) -> Signer | None:
    """The signer of ``INFERMESH_PAYMENTS_<name>``; :class:`ConfigError` if the key is not
    one, or is not the key of ``expected`` (the treasury's own address)."""
    if key is None:
        return None
    try:
        signer = Signer(key.get_secret_value().strip())
    except Exception:  # eth-account's errors for a malformed key vary
        raise ConfigError(f"INFERMESH_PAYMENTS_{name} is not a private key.") from None
    if expected is not None and signer.address != expected:
        raise ConfigError(
            f"INFERMESH_PAYMENTS_{name} is the key of {signer.address}, not of the "
            f"treasury {expected}."
        )
    return signer
