"""Delays between reconnection attempts: exponential, capped, with jitter."""

from __future__ import annotations

import random


class Backoff:
    """Each delay doubles (up to ``maximum``); a random part spreads workers apart.

    The n-th delay is drawn uniformly from ``[base / 2, base]`` where
    ``base = min(maximum, initial * 2**n)`` ("equal jitter"), so a fleet of workers
    that lost the same gateway does not come back at the same instant.
    """

    def __init__(
        self, *, initial: float = 0.5, maximum: float = 30.0, rng: random.Random | None = None
    ) -> None:
        self._initial = initial
        self._maximum = maximum
        self._rng = rng or random.Random()
        self._attempt = 0

    def next(self) -> float:
        """The delay before the next attempt."""
        base = min(self._maximum, self._initial * 2**self._attempt)
        self._attempt = min(self._attempt + 1, 32)
        return self._rng.uniform(base / 2, base)

    def reset(self) -> None:
        """Start again from the shortest delay (after a successful connection)."""
        self._attempt = 0
