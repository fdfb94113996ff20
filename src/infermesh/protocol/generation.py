"""What a gateway sends a worker and what a worker streams back.

A job is of one kind: ``chat`` (a :class:`GenerationJob`, carrying the validated chat
request) or ``embedding`` (an :class:`~infermesh.protocol.embeddings.EmbeddingJob`);
``kind`` tells them apart, and a job without one is a chat job (as workers and gateways
of protocol version 2 send it). The worker answers with a stream of
:class:`GenerationChunk`: text and tool calls for a chat job, vectors for an embedding
job. The last chunk of a successful job has ``finish_reason``
and ``usage`` set. A chunk may also carry ``progress``: the tokens counted so far, so
that a generation cut short (the client went away) is charged for what it used. The
remote worker protocol carries these same types.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from infermesh.protocol.chat import ChatCompletionRequest, FinishReason, ToolCallDelta, Usage
from infermesh.protocol.embeddings import MAX_EMBEDDING_INPUTS, EmbeddingJob, EmbeddingVector


class GenerationJob(BaseModel):
    """One chat completion for a worker to run."""

    model_config = ConfigDict(extra="forbid")

    id: str
    model: str
    kind: Literal["chat"] = "chat"
    request: ChatCompletionRequest


class GenerationChunk(BaseModel):
    """A piece of a generation: text, tool-call deltas, or the end (finish and usage)."""

    model_config = ConfigDict(extra="forbid")

    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    progress: Usage | None = None
    embeddings: list[EmbeddingVector] | None = Field(default=None, max_length=MAX_EMBEDDING_INPUTS)


def _job_kind(value: Any) -> str:
    kind = value.get("kind", "chat") if isinstance(value, dict) else getattr(value, "kind", "chat")
    return kind if kind in ("chat", "embedding") else "chat"


AnyJob = Annotated[
    Annotated[GenerationJob, Tag("chat")] | Annotated[EmbeddingJob, Tag("embedding")],
    Discriminator(_job_kind),
]
"""A job of either kind, as it is parsed (one without ``kind`` is a chat job)."""
WorkerJob = GenerationJob | EmbeddingJob
"""A job of either kind, as code passes it around."""
