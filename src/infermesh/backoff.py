"""Waits between tries: exponential, capped, with "equal jitter".

One formula for every retry loop in infermesh (a worker reconnecting, an async job
retried, a webhook sent again): the n-th wait is drawn from ``[c / 2, c]`` where
``c = min(cap, base * 2 ** (n - 1))``, so waits grow, never exceed ``cap``, and many
clients that failed at once do not come back at the same instant.
"""

from __future__ import annotations

import random

_MAX_DOUBLINGS = 64


def equal_jitter(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 for the first)."""
    ceiling = min(cap, base * 2.0 ** min(max(attempt - 1, 0), _MAX_DOUBLINGS))
    return rng.uniform(ceiling / 2, ceiling)
