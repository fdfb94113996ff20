"""What a gateway sends a worker and what a worker streams back.

A job carries the validated chat request; the worker answers with a stream of
:class:`GenerationChunk`. The last chunk of a successful job has ``finish_reason``
and ``usage`` set. A chunk may also carry ``progress``: the tokens counted so far, so
that a generation cut short (the client went away) is charged for what it used. The
remote worker protocol carries these same types.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from infermesh.protocol.chat import ChatCompletionRequest, FinishReason, ToolCallDelta, Usage


class GenerationJob(BaseModel):
    """One chat completion for a worker to run."""

    model_config = ConfigDict(extra="forbid")

    id: str
    model: str
    request: ChatCompletionRequest


class GenerationChunk(BaseModel):
    """A piece of a generation: text, tool-call deltas, or the end (finish and usage)."""

    model_config = ConfigDict(extra="forbid")

    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    progress: Usage | None = None
