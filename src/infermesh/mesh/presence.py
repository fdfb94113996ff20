"""Shared presence: which workers each gateway of the network holds, kept in Redis.

Every ``interval`` seconds a gateway writes the workers connected to it (their models
and slots, jobs in flight, measured speed, operator) under a key of its own that
expires after ``ttl`` seconds (and its name in an index, a sorted set by update time),
then reads the other gateways' keys and brings its
registry in line: a :class:`~infermesh.mesh.peers.PeerWorker` for each worker another
gateway holds, none for a gateway whose key expired (it died, or lost Redis). A worker
connected here is never shadowed by another gateway's entry.

Without Redis (or with Redis away) a gateway serves its own workers only: presence
degrades to local, it never refuses requests because of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from infermesh.backoff import equal_jitter
from infermesh.mesh.peers import PeerClient, PeerWorker, PeerWorkerView
from infermesh.mesh.registry import WorkerRegistry
from infermesh.mesh.remote import RemoteWorker
from infermesh.mesh.worker import Operator

logger = logging.getLogger(__name__)

MAX_ENTRY_BYTES = 1024 * 1024
"""The largest presence entry read from Redis (a gateway with thousands of workers)."""
MAX_GATEWAYS = 256
INDEX_HORIZON = 300.0
"""Seconds after its last update a gateway is dropped from the index (its key, whose
TTL says whether it is alive, expired long before; the margin absorbs clock skew)."""


class Presence:
    """Publishes this gateway's workers and mirrors the other gateways' into the
    registry, through Redis at ``url`` under ``prefix``."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        gateway_id: str,
        gateway_url: str,
        registry: WorkerRegistry,
        client: PeerClient,
        interval: float = 1.0,
        ttl: float = 5.0,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gateway_id = gateway_id
        self.gateway_url = gateway_url
        self._key_prefix = f"{prefix}:presence:"
        self._index = f"{prefix}:presence-index"
        self._registry = registry
        self._client = client
        self._interval = interval
        self._ttl = ttl
        self._clock = clock
        self._rng = random.Random()
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._peers: dict[str, PeerWorker] = {}
        self.rounds = 0
        """Rounds completed (tests wait on it rather than on time)."""

    @property
    def peers(self) -> list[PeerWorker]:
        return list(self._peers.values())

    async def run(self) -> None:
        """Publish and mirror forever (a background task; cancel it to stop)."""
        failures = 0
        while True:
            try:
                await self.round()
                failures = 0
                await asyncio.sleep(self._interval)
            except (RedisError, OSError) as exc:
                failures += 1
                self._forget_all()
                delay = equal_jitter(failures, base=self._interval, cap=10.0, rng=self._rng)
                logger.warning(
                    "presence in Redis failed (%s): serving local workers only; again in %.1fs",
                    type(exc).__name__,
                    delay,
                )
                await asyncio.sleep(delay)

    async def round(self) -> None:
        """Publish this gateway's workers once and mirror the others' once."""
        await self._publish()
        await self._mirror()
        self.rounds += 1

    async def close(self) -> None:
        """Withdraw this gateway's entry (its workers leave the others' view at once)."""
        with contextlib.suppress(RedisError, OSError):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.delete(self._key_prefix + self.gateway_id)
                pipe.zrem(self._index, self.gateway_id)
                await pipe.execute()
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()
        self._forget_all()
        await self._client.close()

    async def _publish(self) -> None:
        workers = [
            _worker_entry(self._registry, worker)
            for worker in self._registry.workers()
            if isinstance(worker, RemoteWorker) and worker.connected and not worker.draining
        ]
        now = self._clock()
        entry = {
            "gateway_id": self.gateway_id,
            "url": self.gateway_url,
            "at": now,
            "workers": workers,
        }
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(
                self._key_prefix + self.gateway_id,
                orjson.dumps(entry),
                px=int(self._ttl * 1000),
            )
            pipe.zadd(self._index, {self.gateway_id: now})
            await pipe.execute()

    async def _mirror(self) -> None:
        """The other gateways' entries: those named in the index (a sorted set by last
        update, so that no scan of Redis's keys is needed), alive while their key is."""
        stale = self._clock() - INDEX_HORIZON
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(self._index, "-inf", stale)
            pipe.zrevrange(self._index, 0, MAX_GATEWAYS - 1)
            _, members = await pipe.execute()
        names = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
        others = [self._key_prefix + name for name in names if name != self.gateway_id]
        values = await self._redis.mget(others) if others else []
        seen: dict[str, PeerWorkerView] = {}
        for raw in values:
            for view in _views(raw):
                seen.setdefault(view.node_id, view)
        self._reconcile(seen)

    def _reconcile(self, seen: dict[str, PeerWorkerView]) -> None:
        registry = self._registry
        local = {w.node_id for w in registry.workers() if not isinstance(w, PeerWorker)}
        for node_id in list(self._peers):
            if node_id not in seen or node_id in local:
                self._forget(node_id)
        for node_id, view in seen.items():
            if node_id in local:
                continue  # connected here too (it moved): ours wins
            current = self._peers.get(node_id)
            if current is not None:
                current.view = view
                continue
            peer = PeerWorker(view, self._client)
            self._peers[node_id] = peer
            registry.add(peer)
        registry.wake()

    def _forget(self, node_id: str) -> None:
        peer = self._peers.pop(node_id, None)
        if peer is None:
            return
        if any(worker is peer for worker in self._registry.workers()):
            self._registry.remove(node_id)

    def _forget_all(self) -> None:
        for node_id in list(self._peers):
            self._forget(node_id)


def _worker_entry(registry: WorkerRegistry, worker: RemoteWorker) -> dict[str, Any]:
    stats = registry.stats(worker.node_id)
    operator = worker.operator
    return {
        "node_id": worker.node_id,
        "models": {model: worker.capacity(model) for model in worker.models},
        "in_flight": registry.in_flight(worker.node_id),
        "operator": None
        if operator is None
        else {"worker_id": operator.worker_id, "account_id": operator.account_id},
        "tokens_per_second": stats.tokens_per_second,
        "error_rate": stats.error_rate,
    }


def _views(raw: bytes | str | None) -> list[PeerWorkerView]:
    """The workers of one gateway's entry; none if it is missing or malformed (an entry
    is written by a gateway of the network, but Redis is not where trust comes from)."""
    if raw is None or len(raw) > MAX_ENTRY_BYTES:
        return []
    try:
        entry = orjson.loads(raw)
        gateway_id, url = str(entry["gateway_id"])[:64], str(entry["url"])[:500]
        return [_view(item, gateway_id, url) for item in entry["workers"]]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        logger.warning("a malformed presence entry in Redis was ignored")
        return []


def _view(item: dict[str, Any], gateway_id: str, url: str) -> PeerWorkerView:
    operator = item.get("operator")
    return PeerWorkerView(
        node_id=str(item["node_id"])[:128],
        gateway_id=gateway_id,
        gateway_url=url,
        models={str(model): max(int(slots), 0) for model, slots in item["models"].items()},
        in_flight=max(int(item.get("in_flight") or 0), 0),
        operator=None
        if operator is None
        else Operator(str(operator["worker_id"]), int(operator["account_id"])),
        tokens_per_second=_number(item.get("tokens_per_second")),
        error_rate=_number(item.get("error_rate")) or 0.0,
    )


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if number >= 0 and number == number and number != float("inf") else None
