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

Many jobs are multiplexed on one connection by ``job_id``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from infermesh.protocol.chat import FinishReason, Usage
from infermesh.protocol.generation import GenerationChunk, GenerationJob

PROTOCOL_VERSION = 1
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


class ServedModel(_Frame):
    id: str = Field(min_length=1, max_length=200)
    concurrency: int = Field(default=1, ge=1, le=4096)


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


class Refused(_Frame):
    type: Literal["refused"] = "refused"
    code: str
    reason: str


class Heartbeat(_Frame):
    type: Literal["heartbeat"] = "heartbeat"
    in_flight: int | None = Field(default=None, ge=0, le=1_000_000)


class Job(_Frame):
    type: Literal["job"] = "job"
    job: GenerationJob


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


GatewayFrame = Annotated[Welcome | Refused | Heartbeat | Job | Cancel, Field(discriminator="type")]
WorkerFrame = Annotated[
    Hello | Heartbeat | Chunk | Done | JobError | Drain, Field(discriminator="type")
]

gateway_frames: TypeAdapter[Welcome | Refused | Heartbeat | Job | Cancel] = TypeAdapter(
    GatewayFrame
)
worker_frames: TypeAdapter[Hello | Heartbeat | Chunk | Done | JobError | Drain] = TypeAdapter(
    WorkerFrame
)
