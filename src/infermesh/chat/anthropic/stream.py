"""A chat completion's chunks as Anthropic's stream events.

The order is Anthropic's: ``message_start``, ``ping``, then each content block
(``content_block_start``, its deltas, ``content_block_stop``), then ``message_delta``
(stop reason and usage) and ``message_stop``; an error midway ends the stream with an
``error`` event. Text streams as it comes. A tool call is sent whole, once its worker
has finished it (one ``input_json_delta`` of the checked input): a worker's arguments
are a claim, and a client's JSON parser must never see a broken object.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from infermesh.chat.anthropic.answer import new_tool_use_id, stop_reason, tool_input
from infermesh.chat.anthropic.errors import error_object
from infermesh.protocol.anthropic import (
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    ErrorEvent,
    InputJSONDelta,
    Message,
    MessageDelta,
    MessageDeltaEvent,
    MessageDeltaUsage,
    MessageStartEvent,
    MessageStopEvent,
    MessageUsage,
    PingEvent,
    StreamEvent,
    TextBlock,
    TextDelta,
    ToolUseBlock,
)
from infermesh.protocol.chat import ChatCompletionChunk, CompletionUsage, FinishReason
from infermesh.protocol.errors import ErrorBody


@dataclass
class _ToolCall:
    id: str = ""
    name: list[str] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)


class MessageEvents:
    """The events of one message, made as its chunks come (see the module docstring)."""

    def __init__(self, *, message_id: str, model: str, input_tokens: int) -> None:
        self._message = Message(
            id=message_id,
            model=model,
            content=[],
            usage=MessageUsage(input_tokens=input_tokens, output_tokens=0),
        )
        self._blocks = 0
        self._text_block: int | None = None
        self._tool_calls: dict[int, _ToolCall] = {}
        self._finish_reason: FinishReason | None = None
        self._usage: CompletionUsage | None = None

    def start(self) -> list[StreamEvent]:
        return [MessageStartEvent(message=self._message), PingEvent()]

    def feed(self, chunk: str | ChatCompletionChunk) -> list[StreamEvent]:
        """The events of one chunk (plain text, or a chunk with tool calls, a finish
        reason or usage)."""
        if isinstance(chunk, str):
            return self._text(chunk)
        if chunk.usage is not None:
            self._usage = chunk.usage
        if not chunk.choices:
            return []
        choice = chunk.choices[0]
        if choice.finish_reason is not None:
            self._finish_reason = choice.finish_reason
        for delta in choice.delta.tool_calls or ():
            call = self._tool_calls.setdefault(delta.index, _ToolCall())
            call.id = delta.id or call.id
            if delta.function is not None:
                call.name.append(delta.function.name or "")
                call.arguments.append(delta.function.arguments or "")
        return self._text(choice.delta.content) if choice.delta.content else []

    def end(self) -> list[StreamEvent]:
        """The events that close a stream that ended well: the open text block, the
        tool calls, the stop reason and usage."""
        events: list[StreamEvent] = []
        if self._text_block is not None:
            events.append(ContentBlockStopEvent(index=self._text_block))
        for _, call in sorted(self._tool_calls.items()):
            events.extend(self._tool_use(call))
        usage = self._usage
        reason = stop_reason(self._finish_reason, tool_use=bool(self._tool_calls))
        events.append(
            MessageDeltaEvent(
                delta=MessageDelta(stop_reason=reason),
                usage=MessageDeltaUsage(
                    output_tokens=usage.completion_tokens if usage is not None else 0,
                    input_tokens=usage.prompt_tokens if usage is not None else None,
                ),
            )
        )
        events.append(MessageStopEvent())
        return events

    @staticmethod
    def failed(error: ErrorBody) -> ErrorEvent:
        return ErrorEvent(error=error_object(error))

    def _text(self, text: str) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        if self._text_block is None:
            self._text_block = self._next_block()
            events.append(
                ContentBlockStartEvent(index=self._text_block, content_block=TextBlock(text=""))
            )
        events.append(ContentBlockDeltaEvent(index=self._text_block, delta=TextDelta(text=text)))
        return events

    def _tool_use(self, call: _ToolCall) -> list[StreamEvent]:
        index = self._next_block()
        block = ToolUseBlock(id=call.id or new_tool_use_id(), name="".join(call.name), input={})
        arguments = json.dumps(tool_input("".join(call.arguments)), ensure_ascii=False)
        return [
            ContentBlockStartEvent(index=index, content_block=block),
            ContentBlockDeltaEvent(index=index, delta=InputJSONDelta(partial_json=arguments)),
            ContentBlockStopEvent(index=index),
        ]

    def _next_block(self) -> int:
        index = self._blocks
        self._blocks += 1
        return index


async def message_events(
    chunks: AsyncIterator[str | ChatCompletionChunk | ErrorBody],
    *,
    message_id: str,
    model: str,
    input_tokens: int,
) -> AsyncIterator[StreamEvent]:
    """The stream events of a started chat run's chunks (read to their end, so that the
    run settles before the stream ends)."""
    events = MessageEvents(message_id=message_id, model=model, input_tokens=input_tokens)
    for event in events.start():
        yield event
    failed = False
    async for chunk in chunks:
        if isinstance(chunk, ErrorBody):
            failed = True
            yield events.failed(chunk)
        elif not failed:
            for event in events.feed(chunk):
                yield event
    if not failed:
        for event in events.end():
            yield event
