"""API key material: generation, hashing, and the parts of a key that may be stored.

A raw key (``sk-im-`` + 43 URL-safe characters) is shown to its owner once. The
database keeps only its SHA-256 hash (to look it up) and its first 12 characters
(to recognise it in a listing).
"""

from __future__ import annotations

import hashlib
import re
import secrets

KEY_PREFIX = "sk-im-"
DISPLAY_PREFIX_LENGTH = 12
_KEY_PATTERN = re.compile(r"sk-im-[A-Za-z0-9_-]{32,128}")


def generate_key() -> str:
    """A new raw API key with 256 bits of randomness."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def generate_key_id() -> str:
    """A new public key id, ``key_`` and 16 hex characters."""
    return "key_" + secrets.token_hex(8)


def hash_key(raw_key: str) -> str:
    """The SHA-256 hex digest under which a key is stored and looked up."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


def display_prefix(raw_key: str) -> str:
    """The first 12 characters of a key, kept to recognise it in listings."""
    return raw_key[:DISPLAY_PREFIX_LENGTH]


def is_well_formed(raw_key: str) -> bool:
    """Whether ``raw_key`` has the shape of an infermesh key (not whether it exists)."""
    return _KEY_PATTERN.fullmatch(raw_key) is not None
