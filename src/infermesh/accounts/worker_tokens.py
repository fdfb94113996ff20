"""Worker token material: generation, and the shape a worker token must have.

A raw worker token (``wt-im-`` + 43 URL-safe characters) is shown to the GPU operator
once. Like an API key, only its SHA-256 hash and its first 12 characters are stored
(see :func:`infermesh.accounts.keys.hash_key`). The distinct prefix keeps worker
tokens and user API keys (``sk-im-``) from ever being taken for one another.
"""

from __future__ import annotations

import re
import secrets

TOKEN_PREFIX = "wt-im-"
_TOKEN_PATTERN = re.compile(r"wt-im-[A-Za-z0-9_-]{32,128}")


def generate_worker_token() -> str:
    """A new raw worker token with 256 bits of randomness."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def generate_worker_id() -> str:
    """A new public worker id, ``wrk_`` and 16 hex characters."""
    return "wrk_" + secrets.token_hex(8)


def is_worker_token(raw_token: str) -> bool:
    """Whether ``raw_token`` has the shape of a worker token (not whether it exists)."""
    return _TOKEN_PATTERN.fullmatch(raw_token) is not None
