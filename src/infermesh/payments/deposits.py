"""USDC deposits: an account posts the hash of a transfer it sent to the treasury (or
the relayer sent one for its permit, :mod:`~infermesh.payments.permits`); the watcher
credits each transfer once it is deep enough in the chain.

Credit never comes from what a request says: a claim only names a transaction, and
the amount, the sender and the recipient are read from the chain's receipt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from infermesh.billing.ledger import CreditLedger
from infermesh.errors import Forbidden
from infermesh.payments._claims import ClaimBook
from infermesh.payments._progress import DepositProgress, Sighting
from infermesh.payments._relay import account_wallet
from infermesh.payments.chain import Chain, ChainUnavailable, Receipt
from infermesh.payments.outbox import Outbox
from infermesh.payments.records import DepositOptions, DepositRecord, OpenClaim
from infermesh.payments.token_domain import TokenDomain, domain_mismatch
from infermesh.payments.transfers import parse_tx_hash, transfers_to
from infermesh.store import Database, utcnow

logger = logging.getLogger(__name__)


class DepositService:
    """Claims of deposits (``claim``, ``list``) and one look at the chain (``watch_once``)."""

    def __init__(
        self,
        db: Database,
        ledger: CreditLedger,
        chain: Chain,
        options: DepositOptions,
        *,
        outbox: Outbox | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.options = options
        self.chain = chain
        self._db = db
        self._outbox = outbox
        self._claims = ClaimBook(db, options, clock=clock)
        self._progress = DepositProgress(db, ledger, options, clock=clock)
        self._chain_checked = False
        self.misconfigured: str | None = None
        self.passes = 0
        """Watch passes begun (tests wait on it rather than on time)."""
        """Why the watcher examines nothing (the token on chain is not the one
        configured); None while the chain checks pass or have not run."""

    async def claim(self, account_id: int, tx_hash: str) -> list[DepositRecord]:
        """Record that ``account_id`` claims the transaction ``tx_hash`` (again: the
        same); its deposits as they are now. :class:`Conflict` if another account did."""
        tx = parse_tx_hash(tx_hash)
        claim_id = await self._claims.add(account_id, tx)
        return await self._claims.records(account_id, claim_id=claim_id)

    async def wallet_of(self, account_id: int) -> str | None:
        """The wallet the account's deposits must come from (the one it signed in
        with); None if it has none."""
        try:
            return await account_wallet(self._db, account_id)
        except Forbidden:
            return None

    async def records(self, account_id: int, *, claim_id: int) -> list[DepositRecord]:
        """The deposits of one of the account's claims."""
        return await self._claims.records(account_id, claim_id=claim_id)

    async def page(
        self, account_id: int, *, limit: int = 20, after: str | None = None
    ) -> tuple[list[DepositRecord], bool]:
        """The deposits of the account's ``limit`` newest transactions, newest first,
        after the deposit ``after`` (the last of the previous page); and whether there
        are more. :class:`NotFound` for an ``after`` that is not one of its deposits."""
        before = None
        if after is not None:
            before = await self._claims.claim_of(account_id, after)
        records = await self._claims.records(account_id, limit=limit + 1, before_claim=before)
        claims = list(dict.fromkeys(record.claim_id for record in records))
        if len(claims) <= limit:
            return records, False
        return [r for r in records if r.claim_id in claims[:limit]], True

    async def list(self, account_id: int, *, limit: int = 100) -> list[DepositRecord]:
        """The account's deposits, newest first."""
        return await self._claims.records(account_id, limit=limit)

    async def watch_once(self) -> None:
        """Examine every claim not yet final against the chain, once (none at all when
        the node is on another chain or the token is not the configured one)."""
        self.passes += 1
        if not await self._check_chain():
            return
        head = await self.chain.block_number()
        for claim in await self._claims.open():
            await self._examine(claim, head)

    async def _check_chain(self) -> bool:
        """Whether the node and the token are the configured ones (checked once)."""
        if self.misconfigured is not None or self._chain_checked:
            return self.misconfigured is None
        options = self.options
        found = await self.chain.chain_id()
        if found != options.chain_id:
            raise ChainUnavailable(
                f"The payments node is on chain {found}, not on chain "
                f"{options.chain_id}; no deposit is examined."
            )
        domain = TokenDomain(options.usdc_name, options.usdc_version, found, options.usdc)
        self.misconfigured = await domain_mismatch(self.chain, domain)
        if self.misconfigured is not None:
            logger.error("%s No deposit is examined or credited.", self.misconfigured)
            return False
        self._chain_checked = True
        return True

    async def _examine(self, claim: OpenClaim, head: int) -> None:
        receipt = await self.chain.receipt(claim.tx_hash)
        if receipt is None:
            if claim.relayed and await self._dropped(claim.tx_hash):
                await self._progress.fail(
                    claim, "The relayer's transaction was replaced and can never be mined."
                )
                return
            await self._progress.unseen(claim)
            return
        if not receipt.succeeded:
            await self._progress.fail(claim, "The transaction failed (reverted) on chain.")
            return
        options = self.options
        transfers = transfers_to(receipt, token=options.usdc, recipient=options.treasury)
        if not transfers:
            await self._progress.fail(
                claim, f"The transaction holds no USDC transfer to the treasury {options.treasury}."
            )
            return
        confirmations = max(head - receipt.block_number + 1, 0)
        final = confirmations >= options.confirmations and await self._canonical(receipt)
        await self._progress.seen(claim, Sighting(receipt, transfers, confirmations, final))

    async def _dropped(self, tx_hash: str) -> bool:
        """Whether the gateway's own transaction ``tx_hash`` can never be mined."""
        if self._outbox is None:
            return False
        return (await self._outbox.statuses([tx_hash])).get(tx_hash) == "dropped"

    async def _canonical(self, receipt: Receipt) -> bool:
        """Whether the receipt's block is still the chain's block at its height."""
        return await self.chain.block_hash(receipt.block_number) == receipt.block_hash
