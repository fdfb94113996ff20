"""Rate limits and concurrency per tier, account and key, kept in-process or in Redis."""

from __future__ import annotations

from infermesh.limits.book import LimitBook
from infermesh.limits.policy import LimitSettings, TierLimits
from infermesh.limits.service import Admission, RateLimiter
from infermesh.limits.store import LimiterUnavailable, LimitStore

__all__ = [
    "Admission",
    "LimitBook",
    "LimitSettings",
    "LimitStore",
    "LimiterUnavailable",
    "RateLimiter",
    "TierLimits",
]
