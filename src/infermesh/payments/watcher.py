"""The payments watcher: a gateway's background task that looks at the chain now and
then, while it holds the watchers' lease."""

from __future__ import annotations

import asyncio
import logging

from infermesh.payments.chain import ChainUnavailable
from infermesh.payments.deposits import DepositService
from infermesh.payments.lease import WatcherLease
from infermesh.payments.outbox import Outbox
from infermesh.payments.payouts import PayoutService

logger = logging.getLogger(__name__)


class DepositWatcher:
    """Every ``interval`` seconds, on the one gateway that holds ``lease`` (the others
    wait to take over when it lapses): follows the gateway's own transactions
    (``outbox``), examines deposits, and settles payouts whose transfer ended."""

    def __init__(
        self,
        service: DepositService,
        lease: WatcherLease,
        *,
        interval: float,
        outbox: Outbox | None = None,
        payouts: PayoutService | None = None,
    ) -> None:
        self._service = service
        self._lease = lease
        self._interval = interval
        self._outbox = outbox
        self._payouts = payouts

    async def run(self) -> None:
        """Watch forever (a background task; cancel it to stop)."""
        while True:
            await self.tick()
            await asyncio.sleep(self._interval)

    async def tick(self) -> bool:
        """One look at the chain if this gateway holds the lease; whether it did."""
        try:
            if not await self._lease.take():
                return False
            if self._outbox is not None:
                await self._outbox.advance()
            await self._service.watch_once()
            if self._payouts is not None:
                await self._payouts.settle()
        except ChainUnavailable as exc:
            logger.warning("watching deposits: %s", exc.message)
        except Exception:
            logger.exception("watching deposits failed; will try again")
        return True

    async def close(self) -> None:
        """Give the lease back and let go of the chain (on shutdown)."""
        try:
            await self._lease.release()
        except Exception:
            logger.exception("giving back the deposit watcher's lease failed")
        await self._service.chain.close()
