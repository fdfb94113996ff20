"""Credit slices: request holds served from memory against money reserved in the ledger.

A gateway does not write the ledger for each request. For each paying account it
reserves a *slice* of the available balance in one transaction (a hold row whose expiry
is renewed while the slice lives), holds each request's largest cost against the slice
in memory, and writes what the requests cost in batches: one transaction per
``flush_interval`` for all the charges, operator earnings and usage records settled
meanwhile. (Telecom online charging grants quota units the same way.)

What stays exact:

- **Never more than the balance.** Slices are reserved under the balance row's lock, so
  the slices of every gateway together never exceed the balance, and a request is held
  in memory only against what its gateway reserved.
- **A short balance is not split.** An account with less than four slices available
  gets *exact* reservations (what one request needs), and what a request did not use
  goes back to the account at the next batch. So a balance for K requests lets exactly
  K through, on one gateway or on several.
- **Nobody is charged twice.** A batch skips a request already recorded (a retried
  batch), and a request is settled once by its run.

What a crash loses (a gateway SIGKILLed): the settlements not yet written, at most
``flush_interval`` of them (plus a batch being written): those requests are not charged,
their operators not paid, and have no usage record. The money of its slices comes back
when their holds expire, ``ttl`` after their last renewal (every ``ttl / 3``).

An unused slice is given back after ``idle`` seconds. Until then another gateway sees
its money as held, and an account's ``held`` shows it: in a burst over several
gateways, one may refuse a request while another still has part of a slice unpromised
(at most one slice per gateway; a slice is 32 holds of the request that reserved it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from infermesh.billing.ledger import CreditLedger
from infermesh.billing.records import BalanceRecord, Settled, Settlement, SliceCharge, SliceRelease

logger = logging.getLogger(__name__)

RICH_FACTOR = 4
"""An account gets whole slices only while it has this many slices' worth available."""


@dataclass(slots=True)
class _Account:
    """One account as this gateway serves it: its slice and what it knows of its money."""

    account_id: int
    synced: BalanceRecord
    """The account's balance row as this gateway last saw it (reservation or batch)."""
    slice_id: str | None = None
    seq: int = 0
    free: int = 0
    """Reserved in the slice and promised to no running request."""
    promised: int = 0
    """Held by this gateway's running requests."""
    exact: bool = True
    unwritten: int = 0
    """Charged here and not yet written to the ledger."""
    last_used: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def view(self) -> BalanceRecord:
        """The account's money as this gateway knows it now."""
        balance = self.synced.balance - self.unwritten
        available = max(self.synced.balance - self.synced.held, 0) + self.free
        return BalanceRecord(self.account_id, balance, max(balance - available, 0))


@dataclass(frozen=True, slots=True)
class _Promise:
    account: _Account
    slice_id: str
    amount: int


class CreditSlices:
    """This gateway's slices and the settlements waiting to be written; see the module."""

    def __init__(
        self,
        ledger: CreditLedger,
        *,
        ttl: timedelta,
        flush_interval: float = 0.05,
        idle: float = 5.0,
        holds_per_slice: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ledger = ledger
        self._ttl = ttl
        self._flush_interval = flush_interval
        self._idle = idle
        self._holds_per_slice = holds_per_slice
        self._clock = clock
        self._tag = secrets.token_hex(4)
        self._accounts: dict[int, _Account] = {}
        self._promises: dict[str, _Promise] = {}
        self._pending: list[SliceCharge] = []
        self._pending_ids: set[str] = set()
        self._flushing = asyncio.Lock()
        self._writing = 0
        self._wake = asyncio.Event()

    # --- requests -----------------------------------------------------------------------

    async def hold(self, account_id: int, hold_id: str, amount: int) -> int:
        """Hold ``amount`` for the request ``hold_id``; the account's available balance
        after. Raises :class:`~infermesh.billing.ledger.InsufficientCredits`."""
        if amount <= 0:
            raise ValueError("a hold must be of a positive amount")
        account = self._account(account_id)
        while account.slice_id is None or account.free < amount:
            async with account.lock:
                if account.slice_id is None or account.free < amount:
                    await self._top_up(account, amount)
        account.free -= amount
        account.promised += amount
        account.last_used = self._clock()
        assert account.slice_id is not None
        self._promises[hold_id] = _Promise(account, account.slice_id, amount)
        return account.view().available

    def holds(self, hold_id: str) -> bool:
        """Whether ``hold_id`` is a running request held here."""
        return hold_id in self._promises

    def settled(self, hold_id: str) -> bool:
        """Whether ``hold_id`` was settled here and waits to be written."""
        return hold_id in self._pending_ids

    def settle(self, settlement: Settlement) -> Settled:
        """Settle a request held here (or a free one), in memory; it is written with the
        next batch. The cost is capped by the hold."""
        promise = self._promises.pop(settlement.hold_id, None)
        slice_id = None
        if promise is not None:
            account = promise.account
            cost = min(settlement.cost, promise.amount)
            account.promised -= promise.amount
            if promise.slice_id == account.slice_id:
                account.free += promise.amount - cost
            account.unwritten += cost
            account.last_used = self._clock()
            slice_id = promise.slice_id
            settlement = _with_cost(settlement, cost)
            balance = account.view()
        else:
            cost = 0
            settlement = _with_cost(settlement, 0)
            known = self._accounts.get(settlement.account_id)
            balance = (
                known.view() if known is not None else BalanceRecord(settlement.account_id, 0, 0)
            )
        self._pending.append(SliceCharge(slice_id, settlement))
        self._pending_ids.add(settlement.hold_id)
        self._wake.set()
        return Settled(cost, balance)

    def unsettled(self) -> int:
        """Requests held here that have not settled."""
        return len(self._promises)

    def unwritten(self) -> int:
        """Settlements not yet written (waiting for a batch, or in the one being written)."""
        return len(self._pending) + self._writing

    def waiting(self) -> int:
        """Settlements not yet written, and slices not yet given back."""
        live = sum(1 for account in self._accounts.values() if account.slice_id is not None)
        return len(self._pending) + live + self._writing

    async def balance(self, account_id: int) -> BalanceRecord:
        """The account's balance in the ledger once this gateway's settlements are
        written, with this gateway's unpromised slice counted as available."""
        await self.flush()
        record = await self._ledger.balance(account_id)
        account = self._accounts.get(account_id)
        if account is None or account.slice_id is None:
            return record
        return BalanceRecord(account_id, record.balance, max(record.held - account.free, 0))

    # --- reserving ----------------------------------------------------------------------

    def _account(self, account_id: int) -> _Account:
        account = self._accounts.get(account_id)
        if account is None:
            account = self._accounts[account_id] = _Account(
                account_id, BalanceRecord(account_id, 0, 0)
            )
        return account

    async def _top_up(self, account: _Account, need: int) -> None:
        """Reserve enough for a hold of ``need`` (a whole slice if the account can
        afford it)."""
        if account.slice_id is None:
            account.slice_id = f"slice-{self._tag}-{secrets.token_hex(6)}"
            account.seq = 0
            account.free = 0
        account.seq += 1
        least = need - account.free
        most = max(least, need * self._holds_per_slice - account.free)
        reserved = await self._ledger.reserve(
            account.account_id,
            account.slice_id,
            f"{account.slice_id}:{account.seq}",
            least=least,
            most=most,
            rich_from=most * RICH_FACTOR,
            ttl=self._ttl,
            shown_available=account.free,
        )
        if reserved is None:  # the slice expired (this gateway lost the database a while)
            logger.warning("credit slice %s had expired; reserving a new one", account.slice_id)
            account.slice_id = None
            account.free = 0
            return
        account.free += reserved.amount
        account.exact = reserved.exact
        account.synced = reserved.balance

    # --- writing ------------------------------------------------------------------------

    async def flush(self, *, returning: bool = False) -> None:
        """Write the settlements made so far, and give back what slices should: what an
        exact slice has unpromised, and slices idle for ``idle`` seconds (every slice
        with nothing promised if ``returning``)."""
        async with self._flushing:
            charges, self._pending = self._pending, []
            releases = self._releases(returning=returning)
            if not charges and not releases:
                return
            self._writing = len(charges) + len(releases)
            try:
                written = await self._ledger.write_batch(charges, releases)
            except Exception:
                self._pending[:0] = charges
                self._restore(releases)
                raise
            finally:
                self._writing = 0
            for charge in charges:
                self._pending_ids.discard(charge.settlement.hold_id)
                if charge.slice_id is not None:
                    account = self._accounts.get(charge.settlement.account_id)
                    if account is not None:
                        account.unwritten -= charge.settlement.cost
            for hold_id, amount in written.short.items():
                logger.warning(
                    "request %s was settled after its credit slice expired; %d micro-USD "
                    "of its cost could not be charged",
                    hold_id,
                    amount,
                )
            for account in self._accounts.values():
                if account.slice_id in written.ended:
                    logger.warning("credit slice %s had expired", account.slice_id)
                    account.slice_id = None
                    account.free = 0
            for account_id, balance in written.balances.items():
                account = self._accounts.get(account_id)
                if account is not None:
                    account.synced = balance
            self._forget_finished()

    def _forget_finished(self) -> None:
        """Drop the accounts this gateway holds nothing of (memory stays bounded)."""
        finished = [
            account_id
            for account_id, account in self._accounts.items()
            if account.slice_id is None
            and not account.promised
            and not account.unwritten
            and not account.lock.locked()
        ]
        for account_id in finished:
            del self._accounts[account_id]

    def _releases(self, *, returning: bool) -> list[SliceRelease]:
        releases: list[SliceRelease] = []
        now = self._clock()
        for account in self._accounts.values():
            if account.slice_id is None or account.lock.locked():
                continue
            idle = returning or now - account.last_used >= self._idle
            final = not account.promised and (idle or account.exact)
            if not final and not (account.exact and account.free):
                continue
            account.seq += 1
            reference = f"{account.slice_id}:{account.seq}"
            releases.append(
                SliceRelease(account.slice_id, account.account_id, reference, account.free, final)
            )
            account.free = 0
            if final:
                account.slice_id = None
        return releases

    def _restore(self, releases: list[SliceRelease]) -> None:
        """Undo :meth:`_releases` after a batch failed to be written. (A slice replaced
        meanwhile is left to expire: its money comes back after its TTL.)"""
        for release in releases:
            account = self._accounts.get(release.account_id)
            if account is None:
                continue
            if account.slice_id is None and release.final:
                account.slice_id = release.slice_id
            if account.slice_id == release.slice_id:
                account.free += release.amount

    async def run(self) -> None:
        """Write batches, renew slices and give back idle ones, forever (a background
        task of the gateway)."""
        renew_every = max(self._ttl.total_seconds() / 3, 0.1)
        next_renewal = self._clock() + renew_every
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(self._idle / 2, renew_every)):
                    await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self._flush_interval)  # let a batch gather
            try:
                await self.flush()
                if self._clock() >= next_renewal:
                    await self._renew()
                    next_renewal = self._clock() + renew_every
            except Exception:
                logger.exception("writing credit settlements failed; will try again")

    async def _renew(self) -> None:
        slices = {
            account.slice_id: account
            for account in self._accounts.values()
            if account.slice_id is not None
        }
        if not slices:
            return
        renewed = await self._ledger.renew_holds(list(slices), ttl=self._ttl)
        if renewed == len(slices):
            return
        still_open = await self._ledger.open_holds(list(slices))
        for slice_id, account in slices.items():
            if slice_id not in still_open and account.slice_id == slice_id:
                logger.warning("credit slice %s expired before it was renewed", slice_id)
                account.slice_id = None
                account.free = 0

    async def close(self) -> None:
        """Write everything and give back every slice with nothing promised (on
        shutdown)."""
        await self.flush(returning=True)


def _with_cost(settlement: Settlement, cost: int) -> Settlement:
    if cost == settlement.cost:
        return settlement
    return Settlement(
        settlement.hold_id, settlement.account_id, cost, settlement.earning, settlement.usage
    )
