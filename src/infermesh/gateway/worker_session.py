"""A connected worker's session on the gateway, from its welcome to its last frame.

The session registers the :class:`~infermesh.mesh.remote.RemoteWorker` with the router,
then runs two tasks until either ends the connection: a reader that hands each frame
to the remote worker, and a heartbeat that pings the worker, declares it dead after
``heartbeat_misses`` silent intervals, and every few beats checks whether its token
was revoked. At the end, jobs in flight fail over (``WorkerLost``), the worker leaves
the registry, and its state and job counts are written to the database.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from infermesh.accounts.workers import WorkerTokenService
from infermesh.config import Settings
from infermesh.errors import WorkerLost
from infermesh.gateway.worker_link import (
    GOING_AWAY,
    INTERNAL_ERROR,
    POLICY_VIOLATION,
    Disconnected,
    MalformedFrame,
    WebSocketLink,
)
from infermesh.mesh.registry import WorkerRegistry
from infermesh.mesh.remote import ProtocolViolation, RemoteWorker
from infermesh.protocol.wire import Drain, Heartbeat, Welcome

logger = logging.getLogger(__name__)

REVOCATION_CHECK_EVERY = 3
"""Heartbeats between two checks of the worker's token (and updates of its state)."""


@dataclass(frozen=True)
class SessionEnd:
    """Why a session ended, and the close code to send (None: the worker already left)."""

    reason: str
    code: int | None


class WorkerSession:
    """Runs one worker's connection; see the module docstring."""

    def __init__(
        self,
        link: WebSocketLink,
        remote: RemoteWorker,
        *,
        worker_id: str,
        registry: WorkerRegistry,
        tokens: WorkerTokenService,
        settings: Settings,
    ) -> None:
        self._link = link
        self._remote = remote
        self._worker_id = worker_id
        self._registry = registry
        self._tokens = tokens
        self._interval = settings.heartbeat_interval
        self._misses = settings.heartbeat_misses
        self._reported = (0, 0)

    async def run(self, welcome: Welcome) -> None:
        """Welcome the worker, serve it until the connection ends, then clean up."""
        end = SessionEnd("the gateway is shutting down", GOING_AWAY)
        # No await between joining the registry and sending the welcome: the send
        # lock is taken at once, so no job frame can overtake the welcome.
        self._registry.add(self._remote)
        try:
            await self._link.send(welcome)
            await self._record_connected(welcome.accepted)
            end = await self._serve()
        except WorkerLost:
            end = SessionEnd("connection lost", None)
        except Exception:
            logger.exception("worker session %s failed", self._remote.node_id)
            end = SessionEnd("internal error", INTERNAL_ERROR)
        finally:
            self._remote.fail_all(end.reason)
            self._leave_registry()
            logger.info("worker node %s disconnected: %s", self._remote.node_id, end.reason)
            if end.code is not None:
                await self._link.close(end.code, end.reason)
            await self._record_exit()

    async def _serve(self) -> SessionEnd:
        tasks = {
            asyncio.create_task(self._read()),
            asyncio.create_task(self._heartbeat()),
            asyncio.create_task(self._expelled()),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
        return done.pop().result()

    async def _expelled(self) -> SessionEnd:
        """Ends the session when the worker has broken the protocol too often."""
        return SessionEnd(await self._remote.expelled(), POLICY_VIOLATION)

    async def _read(self) -> SessionEnd:
        while True:
            try:
                frame = await self._link.receive()
            except MalformedFrame as exc:
                return SessionEnd(str(exc), POLICY_VIOLATION)
            if isinstance(frame, Disconnected):
                detail = f": {frame.reason}" if frame.reason else ""
                return SessionEnd(f"connection closed ({frame.code}{detail})", None)
            try:
                self._remote.receive(frame)
            except ProtocolViolation as exc:
                return SessionEnd(f"protocol violation: {exc}", POLICY_VIOLATION)
            if isinstance(frame, Drain):
                self._leave_registry()

    async def _heartbeat(self) -> SessionEnd:
        beats = 0
        while True:
            await asyncio.sleep(self._interval)
            if self._remote.silent_for() > self._interval * self._misses:
                return SessionEnd(f"no heartbeat for {self._misses} intervals", GOING_AWAY)
            try:
                await self._link.send(Heartbeat(in_flight=self._remote.in_flight))
            except WorkerLost:
                return SessionEnd("connection lost", None)
            beats += 1
            if beats % REVOCATION_CHECK_EVERY == 0 and await self._revoked():
                return SessionEnd("the worker token was revoked", POLICY_VIOLATION)

    async def _revoked(self) -> bool:
        """Whether the worker's token was revoked; also records that it was seen."""
        try:
            if await self._tokens.is_revoked(self._worker_id):
                return True
            await self._tokens.mark_seen(self._worker_id)
            await self._report_counts()
        except Exception:
            logger.warning("could not check worker %s in the database", self._worker_id)
        return False

    async def _report_counts(self) -> None:
        served, failed = self._remote.served, self._remote.failed
        reported_served, reported_failed = self._reported
        self._reported = (served, failed)
        await self._tokens.add_served(
            self._worker_id, served=served - reported_served, failed=failed - reported_failed
        )

    def _leave_registry(self) -> None:
        """Remove this worker from the registry (not a newer one under the same node id)."""
        if any(worker is self._remote for worker in self._registry.workers()):
            self._registry.remove(self._remote.node_id)

    async def _record_connected(self, models: list[str]) -> None:
        try:
            await self._tokens.mark_connected(
                self._worker_id, node_id=self._remote.node_id, models=models
            )
        except Exception:
            logger.warning("could not record that worker %s connected", self._worker_id)

    async def _record_exit(self) -> None:
        try:
            await self._report_counts()
            if not self._still_connected_elsewhere():
                await self._tokens.mark_disconnected(self._worker_id)
        except Exception:
            logger.warning("could not record that worker %s left", self._worker_id)

    def _still_connected_elsewhere(self) -> bool:
        return any(
            isinstance(worker, RemoteWorker) and worker.worker_id == self._worker_id
            for worker in self._registry.workers()
        )
