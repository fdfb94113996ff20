"""A gateway's in-process cache of API keys: key hash → :class:`Principal`.

Bounded (least recently used entries go first) and short-lived. What it answers may
be stale by at most:

- nothing, for a change made through this process's :class:`AccountService` (it
  applies the change to its cache before the write returns);
- the latency of a Redis pub/sub message, for a change announced on the key channel
  (another gateway, or the CLI when it knows the Redis URL);
- ``ttl`` seconds otherwise (a change written to the database by a process that
  announces nothing, or while this gateway is not subscribed).

Unknown keys are remembered too (at most ``negative_ttl`` seconds, in a bound of their
own), so that a client repeating a wrong key costs no database query each time.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeVar

from infermesh.accounts.records import Principal

DEFAULT_TTL = 5.0
DEFAULT_SIZE = 10_000
MAX_NEGATIVE_TTL = 1.0
"""Unknown keys are remembered at most this long (and never longer than ``ttl``)."""

ChangeKind = Literal["key", "account", "created"]
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class KeyChange:
    """A change that may make a cached answer wrong.

    ``key``: the key ``subject`` (its id) was revoked; ``account``: the account
    ``subject`` (its id) changed (tier, or anything about all its keys); ``created``:
    a key was created, so an unknown key may be known now.
    """

    kind: ChangeKind
    subject: str = ""

    def wire(self) -> str:
        """The change as one short string (``key:<id>``, ``account:<id>``, ``created``)."""
        return f"{self.kind}:{self.subject}" if self.subject else self.kind

    @classmethod
    def parse(cls, text: str) -> KeyChange | None:
        """The change ``text`` describes; None if it is not one."""
        kind, _, subject = text.partition(":")
        if kind == "created" and not subject:
            return cls("created")
        if kind == "key" and subject:
            return cls("key", subject)
        if kind == "account" and subject:
            return cls("account", subject)
        return None


@dataclass(slots=True)
class CachedKey:
    """A known key: who holds it, until when the answer holds, when it was last used."""

    principal: Principal
    expires_at: float
    last_used_at: datetime | None


class KeyCache:
    """Key hash → :class:`CachedKey` (LRU, at most ``size``), and recently unknown hashes.

    ``clock`` is monotonic seconds. Every change bumps :attr:`epoch`; an answer looked
    up before a change is not stored after it (:meth:`put` takes the epoch of the
    lookup's start), so a lookup in flight cannot bring back a revoked key.
    """

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_TTL,
        size: int = DEFAULT_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.negative_ttl = min(ttl, MAX_NEGATIVE_TTL)
        self.size = size
        self.epoch = 0
        self._clock = clock
        self._known: OrderedDict[str, CachedKey] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        """Entries held, known and unknown keys together."""
        return len(self._known) + len(self._unknown)

    def known(self, key_hash: str) -> CachedKey | None:
        """The live entry of ``key_hash`` if it is a known key (marked recently used)."""
        entry = self._known.get(key_hash)
        if entry is None:
            return None
        if entry.expires_at <= self._clock():
            del self._known[key_hash]
            return None
        self._known.move_to_end(key_hash)
        return entry

    def unknown(self, key_hash: str) -> bool:
        """Whether ``key_hash`` was looked up lately and found to be no valid key."""
        expires_at = self._unknown.get(key_hash)
        if expires_at is None:
            return False
        if expires_at <= self._clock():
            del self._unknown[key_hash]
            return False
        return True

    def now(self) -> float:
        """The cache's clock (a lookup notes it, with :attr:`epoch`, before it starts)."""
        return self._clock()

    def put(self, key_hash: str, entry: CachedKey | None, *, epoch: int, started: float) -> None:
        """Remember the answer of a lookup that started at ``started`` in ``epoch``
        (``entry`` None: no valid key); dropped if anything changed meanwhile."""
        if epoch != self.epoch:
            return
        if entry is None:
            _bounded_put(self._unknown, key_hash, started + self.negative_ttl, self.size)
            return
        entry.expires_at = started + self.ttl
        _bounded_put(self._known, key_hash, entry, self.size)

    def apply(self, change: KeyChange) -> None:
        """Forget what ``change`` may have made wrong."""
        self.epoch += 1
        if change.kind == "created":
            self._unknown.clear()
        elif change.kind == "key":
            self._forget(lambda principal: principal.key_id == change.subject)
        else:
            self._forget(lambda principal: str(principal.account_id) == change.subject)

    def clear(self) -> None:
        """Forget everything (changes may have been missed)."""
        self.epoch += 1
        self._known.clear()
        self._unknown.clear()

    def _forget(self, matches: Callable[[Principal], bool]) -> None:
        stale = [key_hash for key_hash, entry in self._known.items() if matches(entry.principal)]
        for key_hash in stale:
            del self._known[key_hash]


def _bounded_put(entries: OrderedDict[str, V], key: str, value: V, size: int) -> None:
    entries[key] = value
    entries.move_to_end(key)
    while len(entries) > size:
        entries.popitem(last=False)
