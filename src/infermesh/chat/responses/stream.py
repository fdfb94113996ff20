"""A chat stream as the Responses API's stream events."""

from __future__ import annotations

from infermesh.chat.assembly import ResponseIdentity
from infermesh.chat.responses.answer import Item, envelope, finished, item_status, response_id_of
from infermesh.protocol import responses as wire
from infermesh.protocol.chat import (
    ChatCompletionChunk,
    CompletionUsage,
    FinishReason,
    ToolCallDelta,
)
from infermesh.protocol.chat import FunctionCallDelta as ChatFunctionCallDelta
from infermesh.protocol.errors import ErrorBody
from infermesh.protocol.responses import ItemStatus, ResponseRequest, StreamEvent


class ResponseStream:
    """The Responses events of one streamed chat run, numbered in order: feed it the run's
    chunks (:meth:`add`), then :meth:`closing`. An error ends it with ``response.failed``."""

    def __init__(self, request: ResponseRequest, identity: ResponseIdentity) -> None:
        self._key = identity.completion_id.rpartition("-")[2]
        self._response = envelope(
            request,
            response_id=response_id_of(identity.completion_id),
            created_at=identity.created,
            model=identity.model,
        )
        self._sequence = 0
        self._items: list[Item] = []
        self._message: Item | None = None  # the message being written
        self._calls: dict[int, Item] = {}  # by the chat tool call's index
        self._finish: FinishReason | None = None
        self._usage: CompletionUsage | None = None
        self.ended = False

    def opening(self) -> list[StreamEvent]:
        return self._numbered(
            [self._lifecycle("response.created"), self._lifecycle("response.in_progress")]
        )

    def add(self, chunk: str | ChatCompletionChunk | ErrorBody) -> list[StreamEvent]:
        if self.ended:
            return []
        if isinstance(chunk, str):
            return self._numbered(self._text(chunk))
        if isinstance(chunk, ErrorBody):
            return self._numbered([self._failed(chunk)])
        events: list[StreamEvent] = []
        for choice in chunk.choices:
            if choice.delta.content:
                events += self._text(choice.delta.content)
            for delta in choice.delta.tool_calls or []:
                events += self._tool_call(delta)
            self._finish = choice.finish_reason or self._finish
        self._usage = chunk.usage or self._usage
        return self._numbered(events)

    def closing(self, *, completed_at: int) -> list[StreamEvent]:
        """The end of a stream that did not fail: every item done, then the response."""
        if self.ended:
            return []
        self.ended = True
        status = item_status(self._finish)
        events = self._close_message(status)
        for item in self._calls.values():
            events += self._close_call(item, status)
        output = [item.item() for item in self._items]
        response = self._response = finished(
            self._response, output, self._finish, self._usage, completed_at=completed_at
        )
        completed = response.status == "completed"
        events.append(self._lifecycle("response.completed" if completed else "response.incomplete"))
        return self._numbered(events)

    def _numbered(self, events: list[StreamEvent]) -> list[StreamEvent]:
        for event in events:
            event.sequence_number = self._sequence
            self._sequence += 1
        return events

    def _lifecycle(self, kind: wire.LifecycleType) -> wire.ResponseEvent:
        return wire.ResponseEvent(type=kind, sequence_number=0, response=self._response)

    def _open(self, item: Item) -> list[StreamEvent]:
        self._items.append(item)
        added = wire.OutputItemEvent(
            type="response.output_item.added",
            sequence_number=0,
            output_index=item.index,
            item=item.item(content=False),
        )
        if item.call_id is not None:
            return [added]
        return [added, self._part(item, "response.content_part.added")]

    def _part(self, item: Item, kind: wire.PartEventType) -> wire.ContentPartEvent:
        return wire.ContentPartEvent(
            type=kind,
            sequence_number=0,
            item_id=item.id,
            output_index=item.index,
            content_index=0,
            part=wire.OutputText(text=item.text()),
        )

    def _done(self, item: Item, status: ItemStatus) -> wire.OutputItemEvent:
        item.status = status
        return wire.OutputItemEvent(
            type="response.output_item.done",
            sequence_number=0,
            output_index=item.index,
            item=item.item(),
        )

    def _text(self, text: str) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        message = self._message
        if message is None:
            index = len(self._items)
            message = self._message = Item(f"msg_{self._key}_{index}", index)
            events += self._open(message)
        message.pieces.append(text)
        delta = wire.OutputTextDelta(
            sequence_number=0,
            item_id=message.id,
            output_index=message.index,
            content_index=0,
            delta=text,
        )
        return [*events, delta]

    def _close_message(self, status: ItemStatus) -> list[StreamEvent]:
        message, self._message = self._message, None
        if message is None:
            return []
        done = wire.OutputTextDone(
            sequence_number=0,
            item_id=message.id,
            output_index=message.index,
            content_index=0,
            text=message.text(),
        )
        return [
            done,
            self._part(message, "response.content_part.done"),
            self._done(message, status),
        ]

    def _tool_call(self, delta: ToolCallDelta) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        function = delta.function or ChatFunctionCallDelta()
        item = self._calls.get(delta.index)
        if item is None:
            events += self._close_message("completed")
            index = len(self._items)
            call_id = delta.id or f"call_{self._key}_{index}"
            item = self._calls[delta.index] = Item(f"fc_{self._key}_{index}", index, call_id)
            item.name = function.name or ""
            events += self._open(item)
        elif function.name:
            item.name += function.name
        if function.arguments:
            item.pieces.append(function.arguments)
            events.append(
                wire.FunctionCallArgumentsDelta(
                    sequence_number=0,
                    item_id=item.id,
                    output_index=item.index,
                    delta=function.arguments,
                )
            )
        return events

    def _close_call(self, item: Item, status: ItemStatus) -> list[StreamEvent]:
        done = wire.FunctionCallArgumentsDone(
            sequence_number=0,
            item_id=item.id,
            output_index=item.index,
            name=item.name,
            arguments=item.text(),
        )
        return [done, self._done(item, status)]

    def _failed(self, error: ErrorBody) -> wire.ResponseEvent:
        """The end of a stream that failed midway: what was written so far, and why."""
        self.ended = True
        for item in self._items:
            if item.status == "in_progress":
                item.status = "incomplete"
        code = "rate_limit_exceeded" if error.code == "rate_limit_exceeded" else "server_error"
        self._response = self._response.model_copy(
            update={
                "status": "failed",
                "error": wire.ResponseError(code=code, message=f"{error.message} ({error.code})"),
                "output": [item.item() for item in self._items],
            }
        )
        return self._lifecycle("response.failed")
