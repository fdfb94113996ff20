"""Bounds on what the job queue is given: limits clamped, free text cut to its column,
identifiers checked (never cut: a shortened URL or id would name something else)."""

from __future__ import annotations

import secrets

from infermesh.errors import InvalidRequest

OWNER_SIZE = 64
ERROR_CODE_SIZE = 64
ERROR_MESSAGE_SIZE = 500


def new_id(prefix: str) -> str:
    """``prefix`` and 24 random hex digits."""
    return prefix + secrets.token_hex(12)


def clamp(value: int, maximum: int) -> int:
    """``value`` within 1 and ``maximum``."""
    return max(1, min(value, maximum))


def cut(text: str | None, size: int) -> str | None:
    """``text`` cut to ``size`` characters, without NUL (PostgreSQL's text refuses it)."""
    return None if text is None else text.replace("\x00", "")[:size]


def check_param(param: str, value: str | None, size: int) -> None:
    """Refuse a client's value longer than its column (an API error)."""
    if value is not None and len(value) > size:
        raise InvalidRequest(f"'{param}' may be at most {size} characters long.", param=param)


def check_internal(name: str, value: str | None, size: int) -> None:
    """Refuse an identifier of ours longer than its column (a bug)."""
    if value is not None and len(value) > size:
        raise ValueError(f"{name} is longer than {size} characters")


def check_owner(owner: str) -> None:
    """A lease owner is 1 to 64 characters."""
    if not 0 < len(owner) <= OWNER_SIZE:
        raise ValueError(f"a lease owner is 1 to {OWNER_SIZE} characters")
