"""The lockout of addresses that send wrong admin keys, so the key cannot be guessed at
speed (see :func:`infermesh.gateway.deps.require_admin`)."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable


class AdminAttempts:
    """Wrong admin keys per client address, counted over a sliding window.

    An address with ``limit`` failures in the last ``window`` seconds is locked out until
    the oldest of them leaves the window. Only failures are kept, and for at most
    ``max_addresses`` addresses: past that, the address whose last failure is oldest is
    forgotten first (whoever holds that many addresses is not slowed by a larger table).
    """

    def __init__(
        self,
        *,
        limit: int,
        window: float,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._window = window
        self._max_addresses = max_addresses
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()  # oldest last failure first

    def __len__(self) -> int:
        return len(self._failures)

    def locked_for(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, or ``None`` when it may now."""
        now = self._clock()
        failures = self._failures.get(address)
        if failures is None:
            return None
        while failures and failures[0] <= now - self._window:
            failures.popleft()
        if not failures:
            del self._failures[address]
        if len(failures) < self._limit:
            return None
        return failures[0] + self._window - now

    def failed(self, address: str) -> None:
        """Count a wrong key from ``address``."""
        now = self._clock()
        self._forget_expired(now)
        failures = self._failures.pop(address, None) or deque(maxlen=self._limit)
        failures.append(now)
        self._failures[address] = failures
        while len(self._failures) > self._max_addresses:
            self._failures.popitem(last=False)

    def _forget_expired(self, now: float) -> None:
        while self._failures:
            oldest = next(iter(self._failures.values()))
            if oldest[-1] > now - self._window:
                return
            self._failures.popitem(last=False)
