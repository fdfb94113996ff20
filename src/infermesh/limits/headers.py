"""OpenAI's rate-limit headers (``x-ratelimit-*``), and durations as OpenAI writes them."""

from __future__ import annotations

from typing import TypeVar

from infermesh.limits.policy import LimitName
from infermesh.limits.store import Level, Occupancy

_State = TypeVar("_State", Level, Occupancy)

_SUFFIXES: dict[LimitName, str] = {
    "requests_per_minute": "requests",
    "tokens_per_minute": "tokens",
    "tokens_per_day": "tokens-day",
    "concurrent_requests": "concurrency",
}


def rate_limit_headers(
    levels: list[tuple[LimitName, Level]], occupancy: list[tuple[LimitName, Occupancy]]
) -> dict[str, str]:
    """``x-ratelimit-limit-*``, ``-remaining-*`` and ``-reset-*`` for each limit in force.

    Requests and tokens per minute use OpenAI's names (``-requests``, ``-tokens``);
    tokens per day are ``-tokens-day`` and concurrency ``-concurrency`` (no reset). When
    both the account and the key have a limit, the headers show the tighter one.
    """
    headers: dict[str, str] = {}
    for name, level in _tightest(levels).items():
        suffix = _SUFFIXES[name]
        headers[f"x-ratelimit-limit-{suffix}"] = str(level.bucket.limit)
        headers[f"x-ratelimit-remaining-{suffix}"] = str(level.remaining)
        headers[f"x-ratelimit-reset-{suffix}"] = readable_duration(level.reset)
    for name, used in _tightest(occupancy).items():
        suffix = _SUFFIXES[name]
        headers[f"x-ratelimit-limit-{suffix}"] = str(used.pool.limit)
        headers[f"x-ratelimit-remaining-{suffix}"] = str(used.remaining)
    return headers


def _tightest(states: list[tuple[LimitName, _State]]) -> dict[LimitName, _State]:
    """Per limit name, the state with the fewest remaining."""
    chosen: dict[LimitName, _State] = {}
    for name, state in states:
        if name not in chosen or state.remaining < chosen[name].remaining:
            chosen[name] = state
    return chosen


def readable_duration(seconds: float) -> str:
    """A duration as OpenAI's headers write it: ``17ms``, ``1.5s``, ``6m0s``, ``2h5m3s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(round(seconds * 1000), 1)}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s"
