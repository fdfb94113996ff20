"""The worker wire protocol, spoken over the WebSocket ``/v1/workers/connect``.

Every frame is one JSON text message with a ``type``. The worker authenticates the
WebSocket handshake with ``Authorization: Bearer <worker token>``, then:

    worker → gateway   hello      (protocol version, worker version, models and slots)
    gateway → worker   welcome    (node id, heartbeat interval, models accepted/refused)
                       or refused (why; the gateway then closes the connection)
    both ways          heartbeat  (every ``heartbeat_interval`` seconds)
    gateway → worker   job        (a generation job)   ·   cancel (stop a job)
    worker → gateway   chunk      (a piece of a job)   ·   done (finish and usage)
                       error      (the job failed)     ·   drain (take no new jobs)
                       batch      (chunk, done and error frames sent together; version 2)

Many jobs are multiplexed on one connection by ``job_id``.

Versions: the hello carries the newest version the worker speaks; the gateway answers
with the version of the connection (the lower of the two) in ``welcome.protocol_version``,
a field it leaves out for a worker of version 1, which knows no such field. Version 2
adds the ``batch`` frame: what a worker queued while it was writing goes as one frame.
Version 3 adds kinds of job: a job says its ``kind`` (``chat`` or ``embedding``), a
model in the hello says the ``kind`` it is served for, and a chunk may carry
``embeddings``. A gateway sends a worker of version 2 only chat jobs, without ``kind``.

Encoding: a frame the gateway built is serialized without being validated again; a
frame from a worker (anyone may run one) is parsed and checked in one pass by
:data:`worker_frames`. The worker writes its hot frames (chunk, done) from plain values
with orjson (:func:`encode_chunk`, :func:`encode_done`), which is several times cheaper
than building and dumping the models; the bytes are the same JSON.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from infermesh.protocol.chat import FinishReason, Usage
from infermesh.protocol.generation import AnyJob, GenerationChunk

PROTOCOL_VERSION = 3
"""The newest worker protocol this side speaks."""
MIN_PROTOCOL_VERSION = 1
"""The oldest worker protocol a gateway still serves (version 1 has no ``batch`` frame,
versions 1 and 2 have chat jobs only)."""
KINDS_VERSION = 3
"""The first version whose jobs and models say their kind."""
MAX_BATCH_FRAMES = 256
MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_JOB_ID = 200
MAX_ERROR_MESSAGE = 4000

WORKER_ERROR_CODES = frozenset(
    {
        "worker_error",
        "backend_error",
        "engine_error",
        "worker_draining",
        "worker_busy",
        "duplicate_job",
        "model_not_served",
        "context_length_exceeded",
        "invalid_request",
        "upstream_rejected",
        "upstream_error",
        "upstream_unavailable",
        "upstream_timeout",
    }
)
"""The codes a worker's ``error`` frame may carry; the gateway reads any other as
``worker_error``. A code only names the failure: the worker never chooses the status
a client sees, and its message is neither stored nor logged."""


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid")


ModelKind = Literal["chat", "embedding"]


class ServedModel(_Frame):
    id: str = Field(min_length=1, max_length=200)
    concurrency: int = Field(default=1, ge=1, le=4096)
    kind: ModelKind | None = Field(
        default=None, description="what the model is served for; None (version 2): chat"
    )


class Hello(_Frame):
    type: Literal["hello"] = "hello"
    protocol_version: int
    worker_version: str = Field(max_length=64)
    name: str | None = Field(default=None, max_length=200)
    models: list[ServedModel] = Field(min_length=1, max_length=256)


class RefusedModel(_Frame):
    id: str
    reason: str


class Welcome(_Frame):
    type: Literal["welcome"] = "welcome"
    node_id: str
    heartbeat_interval: float
    accepted: list[str]
    refused: list[RefusedModel] = Field(default_factory=list)
    protocol_version: int | None = Field(
        default=None,
        description="the version the connection speaks; left out for a worker of version 1",
    )


class Refused(_Frame):
    type: Literal["refused"] = "refused"
    code: str
    reason: str


class Heartbeat(_Frame):
    type: Literal["heartbeat"] = "heartbeat"
    in_flight: int | None = Field(default=None, ge=0, le=1_000_000)


class Job(_Frame):
    type: Literal["job"] = "job"
    job: AnyJob


class Cancel(_Frame):
    type: Literal["cancel"] = "cancel"
    job_id: str


class Chunk(_Frame):
    type: Literal["chunk"] = "chunk"
    job_id: str = Field(max_length=MAX_JOB_ID)
    chunk: GenerationChunk


class Done(_Frame):
    type: Literal["done"] = "done"
    job_id: str = Field(max_length=MAX_JOB_ID)
    finish_reason: FinishReason
    usage: Usage


class JobError(_Frame):
    type: Literal["error"] = "error"
    job_id: str = Field(max_length=MAX_JOB_ID)
    code: str = Field(max_length=64)
    message: str = Field(max_length=MAX_ERROR_MESSAGE)
    status: int | None = Field(
        default=None,
        ge=100,
        le=599,
        description="the engine's HTTP status, for the worker's own logs; the gateway "
        "decides what the client sees",
    )


class Drain(_Frame):
    type: Literal["drain"] = "drain"


JobFrame = Annotated[Chunk | Done | JobError, Field(discriminator="type")]


class Batch(_Frame):
    """Job frames a worker sends together, in order (protocol version 2)."""

    type: Literal["batch"] = "batch"
    frames: list[JobFrame] = Field(min_length=1, max_length=MAX_BATCH_FRAMES)


GatewayFrame = Annotated[Welcome | Refused | Heartbeat | Job | Cancel, Field(discriminator="type")]
WorkerFrame = Annotated[
    Hello | Heartbeat | Chunk | Done | JobError | Drain | Batch, Field(discriminator="type")
]

gateway_frames: TypeAdapter[Welcome | Refused | Heartbeat | Job | Cancel] = TypeAdapter(
    GatewayFrame
)
worker_frames: TypeAdapter[Hello | Heartbeat | Chunk | Done | JobError | Drain | Batch] = (
    TypeAdapter(WorkerFrame)
)
"""Parses and checks a worker's frame in one pass over its JSON text (pydantic-core's own
parser): cheaper than ``orjson.loads`` followed by any validation into these models."""


def encode_gateway_frame(
    frame: Welcome | Refused | Heartbeat | Job | Cancel, version: int = PROTOCOL_VERSION
) -> str:
    """A frame the gateway built, as JSON text, for a worker of ``version``. Fields that
    are None are left out (a worker of version 1 knows no ``welcome.protocol_version``),
    but not within a job, whose request goes to the worker as the gateway validated it;
    a job goes to a worker older than version 3 without its ``kind``."""
    if isinstance(frame, Job):
        if version < KINDS_VERSION:
            return frame.model_dump_json(exclude={"job": {"kind"}})
        return frame.model_dump_json()
    return frame.model_dump_json(exclude_none=True)


def encode_worker_frame(frame: Hello | Heartbeat | Done | JobError | Drain) -> bytes:
    """A worker's frame, as UTF-8 JSON (None fields left out)."""
    return frame.model_dump_json(exclude_none=True).encode()


def encode_chunk(job_id: str, chunk: GenerationChunk) -> bytes:
    """The ``chunk`` frame of a piece of output (its finish and usage are left out: a job
    ends with a ``done`` frame); progress goes as its token counts only."""
    piece: dict[str, Any] = {}
    if chunk.content is not None:
        piece["content"] = chunk.content
    if chunk.tool_calls is not None:
        piece["tool_calls"] = [
            delta.model_dump(mode="json", exclude_none=True) for delta in chunk.tool_calls
        ]
    if chunk.progress is not None:
        piece["progress"] = _counts(chunk.progress)
    if chunk.embeddings is not None:
        piece["embeddings"] = [
            {"index": vector.index, "embedding": vector.embedding} for vector in chunk.embeddings
        ]
    try:
        return orjson.dumps({"type": "chunk", "job_id": job_id, "chunk": piece})
    except orjson.JSONEncodeError:  # what orjson refuses (integers past 64 bits in extras)
        return (
            Chunk(job_id=job_id, chunk=GenerationChunk.model_validate(piece))
            .model_dump_json(exclude_none=True)
            .encode()
        )


def encode_done(job_id: str, finish_reason: FinishReason, usage: Usage) -> bytes:
    """The ``done`` frame that ends a job."""
    frame = {"type": "done", "job_id": job_id, "finish_reason": finish_reason}
    return orjson.dumps({**frame, "usage": _counts(usage)})


def encode_batch(frames: list[bytes]) -> bytes:
    """A ``batch`` frame of encoded job frames (at most :data:`MAX_BATCH_FRAMES`)."""
    return b'{"type":"batch","frames":[' + b",".join(frames) + b"]}"


def _counts(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
