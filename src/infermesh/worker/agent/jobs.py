"""The jobs a worker runs for one gateway connection, each as an asyncio task.

A job's chunks go back as ``chunk`` frames and its end as ``done`` (or ``error``), encoded
here straight from the backend's chunks (see :func:`~infermesh.protocol.wire.encode_chunk`);
an embedding job's vectors go in few frames of bounded size (see
:class:`~infermesh.worker.agent.vector_frames.VectorFrames`). Each model runs at most its
announced number of jobs at once; a job over that limit, for a model not served (or not
served for the job's kind), or sent while draining is answered with an ``error`` frame
straight away so the gateway can try another worker. A job's slot is given back
before its last frame is sent, so the gateway never sees a slot free that is not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from websockets.exceptions import ConnectionClosed

from infermesh.errors import BackendError, InfermeshError, InvalidRequest, UpstreamRejected
from infermesh.protocol.chat import Usage
from infermesh.protocol.embeddings import EmbeddingJob
from infermesh.protocol.generation import GenerationChunk, GenerationJob, WorkerJob
from infermesh.protocol.wire import (
    MAX_ERROR_MESSAGE,
    JobError,
    encode_chunk,
    encode_done,
    encode_worker_frame,
)
from infermesh.worker.agent.observer import JobCounts
from infermesh.worker.agent.vector_frames import VectorFrames
from infermesh.worker.host import ModelHost

logger = logging.getLogger(__name__)

_NO_USAGE = Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
Send = Callable[[bytes], Awaitable[None]]
"""Queues one encoded job frame for the gateway."""


class JobRunner:
    """Runs jobs on a model host within each model's concurrency, and cancels them."""

    def __init__(
        self,
        host: ModelHost,
        send: Send,
        limits: Mapping[str, int],
        counts: JobCounts,
        on_change: Callable[[JobCounts], None],
    ) -> None:
        self._host = host
        self._send = send
        self._limits = dict(limits)
        self._counts = counts
        self._on_change = on_change
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._models: dict[str, str] = {}
        self._busy: dict[str, int] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self.accepting = True

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def submit(self, job: WorkerJob) -> None:
        """Start ``job``, or answer at once with the reason it can't run here."""
        refusal = self._refusal(job)
        if refusal is not None:
            code, message = refusal
            logger.info("job %s refused: %s", job.id, code)
            await self._send(
                encode_worker_frame(JobError(job_id=job.id, code=code, message=message))
            )
            return
        self._models[job.id] = job.model
        self._busy[job.model] = self._busy.get(job.model, 0) + 1
        task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
        self._tasks[job.id] = task
        task.add_done_callback(lambda _: self._release(job.id, task))
        self._changed()

    def cancel(self, job_id: str) -> None:
        """Stop ``job_id`` (the gateway no longer wants it); its slot is free at once."""
        task = self._tasks.get(job_id)
        if task is not None:
            logger.info("job %s cancelled", job_id)
            self._release(job_id, task)
            task.cancel()

    def cancel_all(self) -> None:
        """Stop every job (the connection is gone: the gateway failed them over)."""
        for job_id in list(self._tasks):
            self.cancel(job_id)

    async def wait_idle(self) -> None:
        """Return once no job is running."""
        await self._idle.wait()

    def _refusal(self, job: WorkerJob) -> tuple[str, str] | None:
        if not self.accepting:
            return "worker_draining", "The worker is draining and takes no new jobs."
        if job.id in self._tasks:
            return "duplicate_job", "A job with this id is already running on this worker."
        limit = self._limits.get(job.model)
        if limit is None or not self._host.is_ready(job.model, job.kind):
            served = f"This worker does not serve '{job.model}' for {job.kind} jobs."
            return "model_not_served", served
        if self._busy.get(job.model, 0) >= limit:
            return "worker_busy", f"This worker already runs {limit} jobs for '{job.model}'."
        return None

    async def _run(self, job: WorkerJob) -> None:
        try:
            if isinstance(job, EmbeddingJob):
                final = await self._embed(job)
            else:
                final = await self._stream(job)
            self._counts.served += 1
        except ConnectionClosed:
            return  # the gateway is gone; it has failed the job over already
        except InfermeshError as exc:
            final = encode_worker_frame(_error_frame(job.id, exc))
            self._counts.failed += 1
        except Exception as exc:
            logger.error("job %s failed: %s", job.id, type(exc).__name__)
            error = JobError(job_id=job.id, code="worker_error", message="The worker failed.")
            final = encode_worker_frame(error)
            self._counts.failed += 1
        self._release(job.id, asyncio.current_task())
        try:
            await self._send(final)
        except ConnectionClosed:
            return

    async def _stream(self, job: GenerationJob) -> bytes:
        """Send the job's chunks; return its ``done`` frame.

        A job whose client did not ask for a stream gets its text in few frames: the
        first piece at once (the gateway times the first token), then the text that
        follows joined, sent every :data:`JOIN_SECONDS` (well within the gateway's
        deadline between chunks), at a tool call, or at the end."""
        chunks = self._host.generate(job)
        joined = None if job.request.stream else _Joined(asyncio.get_running_loop().time())
        try:
            async for chunk in chunks:
                if chunk.content or chunk.tool_calls:
                    pending = chunk if joined is None else joined.add(chunk)
                    if pending is not None:
                        await self._send(encode_chunk(job.id, pending))
                if chunk.finish_reason is not None:
                    rest = joined.take() if joined is not None else None
                    if rest is not None:
                        await self._send(encode_chunk(job.id, rest))
                    return encode_done(job.id, chunk.finish_reason, chunk.usage or _NO_USAGE)
        finally:
            await _close(chunks)
        raise BackendError("The engine ended the job without finishing it.")

    async def _embed(self, job: EmbeddingJob) -> bytes:
        """Send the job's vectors (see :class:`VectorFrames`); return its ``done`` frame."""
        chunks = self._host.generate(job)
        frames = VectorFrames(len(job.input), asyncio.get_running_loop().time)
        try:
            async for chunk in chunks:
                for piece in frames.add(chunk.embeddings or ()):
                    await self._send(encode_chunk(job.id, piece))
                if chunk.finish_reason is not None:
                    for piece in frames.finish():
                        await self._send(encode_chunk(job.id, piece))
                    return encode_done(job.id, chunk.finish_reason, chunk.usage or _NO_USAGE)
        finally:
            await _close(chunks)
        raise BackendError("The engine ended the job without finishing it.")

    def _release(self, job_id: str, task: asyncio.Task[None] | None) -> None:
        """Give back the slot of ``task`` running ``job_id`` (once) and tell the observer."""
        if task is None or self._tasks.get(job_id) is not task:
            return
        del self._tasks[job_id]
        model = self._models.pop(job_id)
        self._busy[model] -= 1
        self._changed()

    def _changed(self) -> None:
        self._counts.in_flight = len(self._tasks)
        if self._tasks:
            self._idle.clear()
        else:
            self._idle.set()
        self._on_change(self._counts)


JOIN_SECONDS = 1.0
"""How long a non-streamed job's text is gathered before it is sent."""
JOIN_BYTES = 64 * 1024
"""How much of it at most."""


class _Joined:
    """The text of a non-streamed job, gathered into few chunks (tool-call pieces pass
    as they are, after the text before them)."""

    def __init__(self, now: float) -> None:
        self._parts: list[str] = []
        self._size = 0
        self._progress: Usage | None = None
        self._first = True
        self._since = now

    def add(self, chunk: GenerationChunk) -> GenerationChunk | None:
        """What to send now, if anything."""
        if self._first or chunk.tool_calls:
            self._first = False
            before = self.take()
            return chunk if before is None else _merged(before, chunk)
        self._parts.append(chunk.content or "")
        self._size += len(chunk.content or "")
        self._progress = chunk.progress or self._progress
        now = asyncio.get_running_loop().time()
        if self._size >= JOIN_BYTES or now - self._since >= JOIN_SECONDS:
            return self.take()
        return None

    def take(self) -> GenerationChunk | None:
        """The text gathered so far (and empty the buffer)."""
        self._since = asyncio.get_running_loop().time()
        if not self._parts:
            return None
        text, self._parts, self._size = "".join(self._parts), [], 0
        return GenerationChunk(content=text, progress=self._progress)


def _merged(before: GenerationChunk, chunk: GenerationChunk) -> GenerationChunk:
    """``before``'s text and ``chunk`` (with its own text after it) as one piece."""
    return GenerationChunk(
        content=(before.content or "") + (chunk.content or ""),
        tool_calls=chunk.tool_calls,
        progress=chunk.progress or before.progress,
    )


def _error_frame(job_id: str, exc: InfermeshError) -> JobError:
    """The error frame of a failed job; a refused request carries its 4xx status."""
    status = exc.status_code if isinstance(exc, InvalidRequest | UpstreamRejected) else None
    code = exc.code or "backend_error"
    message = exc.message[:MAX_ERROR_MESSAGE]
    return JobError(job_id=job_id, code=code, message=message, status=status)


async def _close(chunks: AsyncIterator[GenerationChunk]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()
