"""A worker connected over the network, as the gateway's router sees it.

:class:`RemoteWorker` implements the :class:`~infermesh.mesh.worker.Worker` interface for
one connection. It sends :class:`~infermesh.protocol.wire.Job` frames through a
:class:`FrameLink` (the gateway's WebSocket route owns the socket) and turns the frames
the worker sends back, handed in with :meth:`RemoteWorker.receive`, into the chunks of
each job. Workers are untrusted: frames for jobs they were never sent are dropped, and
usage that does not add up is a :class:`ProtocolViolation` that ends the connection.
When the connection ends, every job in flight fails with :class:`WorkerLost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from infermesh.errors import BackendError, InfermeshError, InvalidRequest, WorkerLost
from infermesh.mesh.worker import Operator
from infermesh.protocol.chat import Usage
from infermesh.protocol.generation import GenerationChunk, GenerationJob
from infermesh.protocol.wire import (
    Cancel,
    Chunk,
    Done,
    Drain,
    Heartbeat,
    Hello,
    Job,
    JobError,
    Refused,
    Welcome,
)

logger = logging.getLogger(__name__)

GatewayMessage = Welcome | Refused | Heartbeat | Job | Cancel
WorkerMessage = Hello | Heartbeat | Chunk | Done | JobError | Drain


class FrameLink(Protocol):
    """Sends frames to one worker; raises :class:`WorkerLost` once the link is gone."""

    async def send(self, frame: GatewayMessage) -> None: ...


class ProtocolViolation(Exception):
    """The worker sent something it must not; its connection has to be closed."""


@dataclass
class _JobRun:
    """A job in flight on the worker: where its chunks go."""

    model: str
    chunks: asyncio.Queue[GenerationChunk | InfermeshError] = field(default_factory=asyncio.Queue)


class RemoteWorker:
    """One connected worker: the models it was accepted for and its jobs.

    ``models`` maps each accepted model to the number of jobs the worker runs at once.
    ``served``/``failed`` count its jobs (for the operator's record; the router measures
    speed and errors itself, per lease); ``last_seen`` is the monotonic time of the last
    frame received, ``reported_in_flight`` what the worker's last heartbeat said.
    """

    def __init__(
        self,
        node_id: str,
        models: Mapping[str, int],
        link: FrameLink,
        *,
        worker_id: str | None = None,
        name: str | None = None,
        operator: Operator | None = None,
    ) -> None:
        self._node_id = node_id
        self._models = dict(models)
        self._link = link
        self.worker_id = worker_id
        self.name = name
        self._operator = operator
        self.served = 0
        self.failed = 0
        self.last_seen = time.monotonic()
        self.reported_in_flight: int | None = None
        self.draining = False
        self.closed_reason: str | None = None
        self._jobs: dict[str, _JobRun] = {}

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def operator(self) -> Operator | None:
        return self._operator

    @property
    def models(self) -> list[str]:
        return list(self._models)

    @property
    def connected(self) -> bool:
        return self.closed_reason is None

    @property
    def in_flight(self) -> int:
        """Jobs sent to the worker that have not finished yet."""
        return len(self._jobs)

    def serves(self, model: str) -> bool:
        return self.connected and not self.draining and model in self._models

    def capacity(self, model: str) -> int:
        return self._models.get(model, 0)

    def silent_for(self) -> float:
        """Seconds since the worker last sent a frame."""
        return time.monotonic() - self.last_seen

    async def generate(self, job: GenerationJob) -> AsyncIterator[GenerationChunk]:
        """Send ``job`` and yield its chunks; closing early sends a ``cancel`` frame."""
        if self.closed_reason is not None:
            raise WorkerLost(f"worker {self._node_id} is gone ({self.closed_reason})")
        wire_id = self._wire_id(job.id)
        run = _JobRun(model=job.model)
        self._jobs[wire_id] = run
        try:
            wire_job = job if wire_id == job.id else job.model_copy(update={"id": wire_id})
            await self._link.send(Job(job=wire_job))
            while True:
                item = await run.chunks.get()
                if isinstance(item, InfermeshError):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            if self._jobs.pop(wire_id, None) is not None:
                await self._cancel(wire_id)

    def receive(self, frame: WorkerMessage) -> None:
        """Handle one frame from the worker (it arrived just now).

        Raises :class:`ProtocolViolation` when the connection must be closed.
        """
        self.last_seen = time.monotonic()
        if isinstance(frame, Chunk):
            self._on_chunk(frame)
        elif isinstance(frame, Done):
            self._on_done(frame)
        elif isinstance(frame, JobError):
            self._on_error(frame)
        elif isinstance(frame, Heartbeat):
            self.reported_in_flight = frame.in_flight
        elif isinstance(frame, Drain):
            self.draining = True
            logger.info("worker %s is draining (%d jobs in flight)", self._node_id, self.in_flight)
        else:
            logger.warning("worker %s sent a second hello; frame dropped", self._node_id)

    def fail_all(self, reason: str) -> None:
        """The connection ended: take no more jobs, fail those in flight with WorkerLost."""
        if self.closed_reason is None:
            self.closed_reason = reason
        runs, self._jobs = list(self._jobs.values()), {}
        for run in runs:
            self._record_failure()
            run.chunks.put_nowait(WorkerLost(f"worker {self._node_id} was lost ({reason})"))

    def _wire_id(self, job_id: str) -> str:
        """The job's id on this connection: its own, unless that one is already in flight."""
        wire_id, attempt = job_id, 1
        while wire_id in self._jobs:
            attempt += 1
            wire_id = f"{job_id}.{attempt}"
        return wire_id

    async def _cancel(self, wire_id: str) -> None:
        if self.closed_reason is None:
            with contextlib.suppress(WorkerLost):
                await self._link.send(Cancel(job_id=wire_id))

    def _run_for(self, job_id: str, kind: str) -> _JobRun | None:
        run = self._jobs.get(job_id)
        if run is None:
            logger.warning(
                "worker %s sent %s for job %s, which it is not running; frame dropped",
                self._node_id,
                kind,
                job_id[:100],
            )
        return run

    def _on_chunk(self, frame: Chunk) -> None:
        run = self._run_for(frame.job_id, "a chunk")
        if run is None:
            return
        # The end of a job comes only in a done frame, where its usage is checked.
        update: dict[str, object] = {"finish_reason": None, "usage": None}
        progress = frame.chunk.progress
        if progress is not None and not _adds_up(progress):
            update["progress"] = None
        chunk = frame.chunk.model_copy(update=update)
        run.chunks.put_nowait(chunk)

    def _on_done(self, frame: Done) -> None:
        run = self._run_for(frame.job_id, "done")
        if run is None:
            return
        _check_usage(frame.usage)
        del self._jobs[frame.job_id]
        self.served += 1
        run.chunks.put_nowait(GenerationChunk(finish_reason=frame.finish_reason, usage=frame.usage))

    def _on_error(self, frame: JobError) -> None:
        run = self._run_for(frame.job_id, "an error")
        if run is None:
            return
        del self._jobs[frame.job_id]
        error = _job_error(frame)
        if not isinstance(error, InvalidRequest):
            self._record_failure()
        logger.info("job %s failed on worker %s: %s", frame.job_id, self._node_id, frame.code)
        run.chunks.put_nowait(error)

    def _record_failure(self) -> None:
        self.failed += 1


def _adds_up(usage: Usage) -> bool:
    return usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def _check_usage(usage: Usage) -> None:
    if not _adds_up(usage):
        raise ProtocolViolation(
            f"usage does not add up: {usage.prompt_tokens} prompt + "
            f"{usage.completion_tokens} completion != {usage.total_tokens} total tokens"
        )


def _job_error(frame: JobError) -> InfermeshError:
    """The error a job's client gets: the request's fault (4xx) or the worker's."""
    if frame.status is not None and 400 <= frame.status < 500:
        error = InvalidRequest(frame.message, code=frame.code)
        error.status_code = frame.status
        return error
    return BackendError(f"The worker failed: {frame.message}", code=frame.code)
