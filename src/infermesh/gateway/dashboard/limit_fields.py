"""The rate-limit fields of the dashboard's forms (a key's own limits, on the API keys
page; an account's own, on the admin's account page): their labels, and the limits
their typed text sets."""

from __future__ import annotations

import re
from collections.abc import Mapping

from infermesh.errors import InvalidRequest
from infermesh.limits.policy import UNLIMITED, LimitName, LimitSettings, LimitValue, parse_settings

LIMIT_LABELS: dict[LimitName, str] = {
    "requests_per_minute": "Requests per minute",
    "tokens_per_minute": "Tokens per minute",
    "tokens_per_day": "Tokens per day",
    "concurrent_requests": "Concurrent requests",
}
_WHOLE_NUMBER = re.compile(r"[0-9]{1,16}")


def typed_limit(name: LimitName, typed: str, *, unlimited: bool = False) -> LimitValue | None:
    """The limit typed in ``name``'s field: None when it is blank, else a whole number
    (commas and underscores allowed) or, where the field takes it, ``unlimited``;
    :class:`InvalidRequest` for anything else."""
    text = typed.strip().replace(",", "").replace("_", "")
    if unlimited:
        text = text.lower()
    if not text:
        return None
    if unlimited and text == UNLIMITED:
        return "unlimited"
    if not _WHOLE_NUMBER.fullmatch(text):
        takes = f'a whole number or "{UNLIMITED}"' if unlimited else "a whole number"
        raise InvalidRequest(
            f"{LIMIT_LABELS[name]}: give {takes}, or leave it blank.",
            param=name,
            code="invalid_limits",
        )
    return int(text)


def limit_settings(changes: Mapping[str, LimitValue | None]) -> LimitSettings:
    """The settings ``changes`` make; :class:`InvalidRequest` where they are not valid."""
    try:
        return parse_settings(changes)
    except ValueError as exc:
        raise InvalidRequest(f"Invalid limits: {exc}.", code="invalid_limits") from None
