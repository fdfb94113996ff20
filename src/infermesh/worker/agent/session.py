"""One connection of a worker to its gateway: the handshake, then frames both ways.

After ``hello``/``welcome``, four tasks run until one ends the connection: the reader
(jobs and cancels in), the writer (every frame out, in order, through an
:class:`~infermesh.worker.agent.outbox.Outbox`), the heartbeat (every interval; a
gateway silent for a few intervals is taken for dead), and the drainer (on a drain
request: send ``drain``, wait for the jobs in flight and their last frames, close).
Whatever ends it, the jobs still running stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable

from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from infermesh import __version__
from infermesh.protocol.wire import (
    KINDS_VERSION,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    Cancel,
    Drain,
    Heartbeat,
    Hello,
    Job,
    ModelKind,
    Refused,
    ServedModel,
    Welcome,
    encode_worker_frame,
    gateway_frames,
)
from infermesh.worker.agent.config import AgentConfig
from infermesh.worker.agent.jobs import JobRunner
from infermesh.worker.agent.observer import AgentObserver, JobCounts
from infermesh.worker.agent.outbox import Outbox
from infermesh.worker.host import ModelHost

logger = logging.getLogger(__name__)

FATAL_REFUSALS = frozenset({"unauthorized", "unsupported_protocol", "no_known_models"})
"""Refusals that another attempt would get again: the agent stops instead of retrying."""

_MIN_HEARTBEAT_INTERVAL = 0.05

GatewayMessage = Welcome | Refused | Heartbeat | Job | Cancel


class Refusal(Exception):
    """The gateway refused the worker; ``fatal`` when retrying cannot help."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.fatal = code in FATAL_REFUSALS


class GatewaySession:
    """A worker's side of one WebSocket connection to the gateway.

    ``protocol_version`` is the newest version the hello offers (a lower one to talk to
    a gateway that knows no newer).
    """

    def __init__(
        self,
        websocket: ClientConnection,
        host: ModelHost,
        config: AgentConfig,
        observer: AgentObserver,
        counts: JobCounts,
        *,
        protocol_version: int = PROTOCOL_VERSION,
    ) -> None:
        self._websocket = websocket
        self._host = host
        self._config = config
        self._observer = observer
        self._counts = counts
        self._protocol_version = protocol_version
        self._last_heard = time.monotonic()

    async def handshake(self) -> Welcome:
        """Say hello; return the welcome, or raise :class:`Refusal`."""
        models = self._served_models()
        hello = Hello(
            protocol_version=self._protocol_version,
            worker_version=__version__,
            name=self._config.name,
            models=models,
        )
        # A gateway that refuses before reading the hello (a bad token) has closed by now,
        # but its refusal, with the reason, is still queued to be read.
        with contextlib.suppress(ConnectionClosed):
            await self._websocket.send(encode_worker_frame(hello), text=True)
        try:
            message = await asyncio.wait_for(self._websocket.recv(), self._config.connect_timeout)
        except ConnectionClosed as exc:
            raise Refusal("closed", describe_close(exc)) from None
        frame = _parse(message)
        if isinstance(frame, Refused):
            raise Refusal(frame.code, frame.reason)
        if not isinstance(frame, Welcome):
            raise Refusal("protocol_error", "the gateway did not answer the hello with a welcome")
        self._last_heard = time.monotonic()
        return frame

    def _served_models(self) -> list[ServedModel]:
        """The models the hello announces. An embedding model says its kind; a chat model
        says none (None is chat), so that a gateway of version 2, which knows no kinds,
        reads the hello. A hello of a version before kinds leaves embedding models out."""
        config = self._config
        models = [
            ServedModel(id=model, concurrency=slots, kind=_announced(config.kind(model)))
            for model, slots in config.models.items()
            if self._protocol_version >= KINDS_VERSION or config.kind(model) == "chat"
        ]
        if not models:
            raise Refusal(
                "no_known_models",
                f"this worker serves only embedding models, and a gateway of protocol "
                f"version {self._protocol_version} serves none",
            )
        return models

    async def serve(
        self, welcome: Welcome, *, draining: asyncio.Event, force: asyncio.Event
    ) -> str:
        """Run jobs until the connection ends; return why it ended."""
        version = min(welcome.protocol_version or MIN_PROTOCOL_VERSION, self._protocol_version)
        announced = {model.id: model.concurrency for model in self._served_models()}
        limits = {model: announced[model] for model in welcome.accepted if model in announced}
        outbox = Outbox(self._websocket, batches=version >= 2)
        runner = JobRunner(
            self._host, outbox.send, limits, self._counts, self._observer.jobs_changed
        )
        interval = max(welcome.heartbeat_interval, _MIN_HEARTBEAT_INTERVAL)
        tasks = {
            asyncio.create_task(self._read(runner)),
            asyncio.create_task(_write(outbox)),
            asyncio.create_task(self._heartbeat(interval, runner, outbox)),
            asyncio.create_task(self._drain(runner, outbox, draining, force)),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            return done.pop().result()
        finally:
            for task in tasks:
                task.cancel()
            runner.cancel_all()

    async def _read(self, runner: JobRunner) -> str:
        try:
            async for message in self._websocket:
                self._last_heard = time.monotonic()
                frame = _parse(message)
                if isinstance(frame, Job):
                    await runner.submit(frame.job)
                elif isinstance(frame, Cancel):
                    runner.cancel(frame.job_id)
                elif isinstance(frame, Refused):
                    return f"refused ({frame.code}): {frame.reason}"
        except ConnectionClosed as exc:
            return describe_close(exc)
        if not runner.accepting and self._websocket.close_code == 1000:
            return "drained"
        return _describe_code(self._websocket.close_code, self._websocket.close_reason)

    async def _heartbeat(self, interval: float, runner: JobRunner, outbox: Outbox) -> str:
        silent_limit = interval * self._config.heartbeat_misses
        try:
            while True:
                await asyncio.sleep(interval)
                if time.monotonic() - self._last_heard > silent_limit:
                    # It would not answer a closing handshake either: drop the connection
                    # now instead of waiting for one, and dial the next gateway sooner.
                    self._websocket.transport.abort()
                    return f"the gateway was silent for {silent_limit:g}s"
                heartbeat = Heartbeat(in_flight=runner.in_flight)
                await outbox.send(encode_worker_frame(heartbeat), job=False)
        except ConnectionClosed as exc:
            return describe_close(exc)

    async def _drain(
        self, runner: JobRunner, outbox: Outbox, draining: asyncio.Event, force: asyncio.Event
    ) -> str:
        await draining.wait()
        runner.accepting = False
        try:
            await outbox.send(encode_worker_frame(Drain()), job=False)
            self._observer.draining(runner.in_flight)
            await _first_of(runner.wait_idle(), force.wait())
            if not force.is_set():
                await outbox.flush()
            await self._websocket.close(1000, "drained")
        except ConnectionClosed as exc:
            return describe_close(exc)
        return "drained"


async def _write(outbox: Outbox) -> str:
    """Run the outbox's writer; return why the connection ended."""
    try:
        await outbox.run()
    except ConnectionClosed as exc:
        return describe_close(exc)


def _announced(kind: ModelKind) -> ModelKind | None:
    return None if kind == "chat" else kind


def _parse(message: str | bytes) -> GatewayMessage | None:
    try:
        return gateway_frames.validate_json(message)
    except ValidationError as exc:
        logger.warning("the gateway sent a malformed frame (%d errors); ignored", exc.error_count())
        return None


def describe_close(exc: ConnectionClosed) -> str:
    """Why a connection closed, in words."""
    if exc.rcvd is None:
        return "the connection to the gateway was lost"
    return _describe_code(exc.rcvd.code, exc.rcvd.reason)


def _describe_code(code: int | None, reason: str | None) -> str:
    detail = f": {reason}" if reason else ""
    return f"the gateway closed the connection ({code}{detail})"


async def _first_of(*waits: Awaitable[object]) -> None:
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
