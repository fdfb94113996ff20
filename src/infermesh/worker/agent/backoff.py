"""Delays between reconnection attempts: exponential, capped, with jitter."""

from __future__ import annotations

import random

from infermesh.backoff import equal_jitter


class Backoff:
    """Each delay doubles (up to ``maximum``); a random part spreads workers apart.

    The n-th delay is :func:`~infermesh.backoff.equal_jitter`'s, from ``initial`` up to
    ``maximum``, so a fleet of workers that lost the same gateway does not come back at
    the same instant.
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
        self._attempt = min(self._attempt + 1, 32)
        return equal_jitter(self._attempt, base=self._initial, cap=self._maximum, rng=self._rng)

    def reset(self) -> None:
        """Start again from the shortest delay (after a successful connection)."""
        self._attempt = 0
