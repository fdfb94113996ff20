"""A worker connected over the network, as the gateway's router sees it.

:class:`RemoteWorker` implements the :class:`~infermesh.mesh.worker.Worker` interface for
one connection. It sends :class:`~infermesh.protocol.wire.Job` frames through a
:class:`FrameLink` (the gateway's WebSocket route owns the socket) and turns the frames
the worker sends back, handed in with :meth:`RemoteWorker.receive`, into the chunks of
each job. Workers are untrusted:

- frames for jobs they were never sent are dropped (and not logged verbatim);
- a job's output is bounded by its :class:`~infermesh.mesh.worker.JobTerms`: a worker
  that streams more fails the job and earns a strike;
- an ``error`` frame names a failure from a fixed list; the client sees a status the
  gateway chooses, and the worker's message goes nowhere;
- usage that does not add up is a :class:`ProtocolViolation` that ends the connection,
  and so is a second strike.

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

from infermesh.errors import InfermeshError, WorkerFailed, WorkerLost, WorkerMisbehaved
from infermesh.mesh.worker import JobTerms, Operator, text_bytes
from infermesh.protocol.chat import Usage
from infermesh.protocol.generation import GenerationChunk, WorkerJob
from infermesh.protocol.wire import (
    WORKER_ERROR_CODES,
    Batch,
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
WorkerMessage = Hello | Heartbeat | Chunk | Done | JobError | Drain | Batch

MAX_STRIKES = 2
"""Protocol breaches a connection survives minus one: the second one closes it."""
_LOGGED_DROPS = 10


class FrameLink(Protocol):
    """Sends frames to one worker; raises :class:`WorkerLost` once the link is gone."""

    async def send(self, frame: GatewayMessage) -> None: ...


class ProtocolViolation(Exception):
    """The worker sent something it must not; its connection has to be closed."""


@dataclass
class _JobRun:
    """A job in flight on the worker: its terms, what it sent so far, where chunks go."""

    wire_id: str
    model: str
    terms: JobTerms
    chunks: asyncio.Queue[GenerationChunk | InfermeshError] = field(default_factory=asyncio.Queue)
    output_bytes: int = 0
    chunk_count: int = 0
    ended: bool = False

    def end(self, item: GenerationChunk | InfermeshError) -> None:
        """No more frames are taken for the job: queue its last item and free its slot."""
        self.ended = True
        self.chunks.put_nowait(item)
        self.terms.on_end()


class RemoteWorker:
    """One connected worker: the models it was accepted for and its jobs.

    ``models`` maps each accepted model to the number of jobs the worker runs at once.
    ``served``/``failed`` count its jobs (for the operator's record; the router measures
    speed and errors itself, per lease); ``last_seen`` is the monotonic time of the last
    frame received, ``reported_in_flight`` what the worker's last heartbeat said;
    ``strikes`` the protocol breaches caught so far.
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
        self.strikes = 0
        self.dropped_frames = 0
        self.last_seen = time.monotonic()
        self.reported_in_flight: int | None = None
        self.draining = False
        self.closed_reason: str | None = None
        self._expelled = asyncio.Event()
        self._expelled_reason = ""
        self._jobs: dict[str, _JobRun] = {}
        self._background: set[asyncio.Future[None]] = set()

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
        """Jobs sent to the worker that it has not finished yet."""
        return sum(1 for run in self._jobs.values() if not run.ended)

    def serves(self, model: str) -> bool:
        return self.connected and not self.draining and model in self._models

    def capacity(self, model: str) -> int:
        return self._models.get(model, 0)

    def silent_for(self) -> float:
        """Seconds since the worker last sent a frame."""
        return time.monotonic() - self.last_seen

    async def generate(self, job: WorkerJob, terms: JobTerms) -> AsyncIterator[GenerationChunk]:
        """Send ``job`` and yield its chunks; closing early sends a ``cancel`` frame."""
        if self.closed_reason is not None:
            raise WorkerLost(f"worker {self._node_id} is gone ({self.closed_reason})")
        wire_id = self._wire_id(job.id)
        run = _JobRun(wire_id=wire_id, model=job.model, terms=terms)
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
            if self._jobs.pop(wire_id, None) is not None and not run.ended:
                await self._cancel(wire_id)

    def receive(self, frame: WorkerMessage) -> None:
        """Handle one frame from the worker (it arrived just now).

        Raises :class:`ProtocolViolation` when the connection must be closed.
        """
        self.last_seen = time.monotonic()
        if isinstance(frame, Chunk | Done | JobError):
            self._on_job_frame(frame)
        elif isinstance(frame, Batch):
            for job_frame in frame.frames:
                self._on_job_frame(job_frame)
        elif isinstance(frame, Heartbeat):
            self.reported_in_flight = frame.in_flight
        elif isinstance(frame, Drain):
            self.draining = True
            logger.info("worker %s is draining (%d jobs in flight)", self._node_id, self.in_flight)
        else:
            logger.warning("worker %s sent a second hello; frame dropped", self._node_id)

    def penalize(self, reason: str) -> None:
        """A strike; the connection is expelled (see :meth:`expelled`) at the last one."""
        self.strikes += 1
        logger.warning(
            "worker %s broke the protocol (strike %d of %d): %s",
            self._node_id,
            self.strikes,
            MAX_STRIKES,
            reason,
        )
        if self.strikes >= MAX_STRIKES and not self._expelled.is_set():
            self._expelled_reason = f"protocol violation: {reason} (strike {self.strikes})"
            self._expelled.set()

    async def expelled(self) -> str:
        """Wait until the worker has struck out; the reason to close its connection."""
        await self._expelled.wait()
        return self._expelled_reason

    def fail_all(self, reason: str) -> None:
        """The connection ended: take no more jobs, fail those in flight with WorkerLost."""
        if self.closed_reason is None:
            self.closed_reason = reason
        runs, self._jobs = list(self._jobs.values()), {}
        for run in runs:
            if not run.ended:
                self._record_failure()
                run.end(WorkerLost(f"worker {self._node_id} was lost ({reason})"))

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
        """The live job a frame is for; None (the frame is dropped) for any other id.
        The id is the worker's text and is never logged."""
        run = self._jobs.get(job_id)
        if run is not None and not run.ended:
            return run
        self.dropped_frames += 1
        if self.dropped_frames <= _LOGGED_DROPS:
            logger.warning(
                "worker %s sent %s for a job it is not running; frame dropped%s",
                self._node_id,
                kind,
                " (further drops are not logged)" if self.dropped_frames == _LOGGED_DROPS else "",
            )
        return None

    def _on_job_frame(self, frame: Chunk | Done | JobError) -> None:
        if isinstance(frame, Chunk):
            self._on_chunk(frame)
        elif isinstance(frame, Done):
            self._on_done(frame)
        else:
            self._on_error(frame)

    def _on_chunk(self, frame: Chunk) -> None:
        run = self._run_for(frame.job_id, "a chunk")
        if run is None:
            return
        chunk = frame.chunk
        run.chunk_count += 1
        run.output_bytes += _output_bytes(chunk)
        terms = run.terms
        if run.output_bytes > terms.max_output_bytes or run.chunk_count > terms.max_chunks:
            self._flooded(run)
            return
        # The end of a job comes only in a done frame, where its usage is checked.
        bad_progress = chunk.progress is not None and not _adds_up(chunk.progress)
        if bad_progress or chunk.finish_reason is not None or chunk.usage is not None:
            update: dict[str, object] = {"finish_reason": None, "usage": None}
            if bad_progress:
                update["progress"] = None
            chunk = chunk.model_copy(update=update)
        run.chunks.put_nowait(chunk)

    def _flooded(self, run: _JobRun) -> None:
        """Drop what the job buffered, fail it at once and tell the worker to stop."""
        self._record_failure()
        while not run.chunks.empty():
            run.chunks.get_nowait()
        error = WorkerMisbehaved(
            "The worker sent more output than the request allows.", code="output_overflow"
        )
        run.end(error)
        cancel = asyncio.ensure_future(self._cancel(run.wire_id))
        self._background.add(cancel)
        cancel.add_done_callback(self._background.discard)
        self.penalize(
            f"more than {run.terms.max_output_bytes} bytes or {run.terms.max_chunks} chunks "
            f"for a job of at most {run.terms.max_output_tokens} tokens"
        )

    def _on_done(self, frame: Done) -> None:
        run = self._run_for(frame.job_id, "done")
        if run is None:
            return
        _check_usage(frame.usage)
        self.served += 1
        run.end(GenerationChunk(finish_reason=frame.finish_reason, usage=frame.usage))

    def _on_error(self, frame: JobError) -> None:
        run = self._run_for(frame.job_id, "an error")
        if run is None:
            return
        code = frame.code if frame.code in WORKER_ERROR_CODES else "worker_error"
        self._record_failure()
        logger.info("a job failed on worker %s: %s", self._node_id, code)
        run.end(WorkerFailed(f"The worker failed to run the request ({code}).", code=code))

    def _record_failure(self) -> None:
        self.failed += 1


def _output_bytes(chunk: GenerationChunk) -> int:
    """The chunk's text, the tool-call ids the worker made up (a flood may hide there) and
    its vectors."""
    size = text_bytes(chunk) + sum(len(delta.id or "") for delta in chunk.tool_calls or ())
    if chunk.embeddings:
        size += sum(len(vector.embedding) for vector in chunk.embeddings)
    return size


def _adds_up(usage: Usage) -> bool:
    return usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def _check_usage(usage: Usage) -> None:
    if not _adds_up(usage):
        raise ProtocolViolation(
            f"usage does not add up: {usage.prompt_tokens} prompt + "
            f"{usage.completion_tokens} completion != {usage.total_tokens} total tokens"
        )
