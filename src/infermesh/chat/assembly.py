"""Turn a worker's generation chunks into OpenAI responses and stream chunks."""

from __future__ import annotations

from dataclasses import dataclass, field

from infermesh.protocol.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChoiceDelta,
    ChunkChoice,
    CompletionUsage,
    FinishReason,
    FunctionCall,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from infermesh.protocol.chat import ResponseMetadata as Metadata
from infermesh.protocol.generation import GenerationChunk


@dataclass
class _PartialToolCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class CompletionBuilder:
    """Accumulates chunks (text and tool-call deltas by index) into one message."""

    def __init__(self) -> None:
        self._content: list[str] = []
        self._tool_calls: dict[int, _PartialToolCall] = {}
        self.finish_reason: FinishReason | None = None
        self.usage: Usage | None = None

    def add(self, chunk: GenerationChunk) -> None:
        if chunk.content:
            self._content.append(chunk.content)
        for delta in chunk.tool_calls or []:
            self._add_tool_delta(delta)
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
        if chunk.usage is not None:
            self.usage = chunk.usage

    def message(self) -> AssistantMessage:
        tool_calls = [
            ToolCall(
                id=call.id, function=FunctionCall(name=call.name, arguments="".join(call.arguments))
            )
            for _, call in sorted(self._tool_calls.items())
        ]
        content = "".join(self._content)
        return AssistantMessage(
            content=content if content or not tool_calls else None,
            tool_calls=tool_calls or None,
        )

    @property
    def tool_call_count(self) -> int:
        return len(self._tool_calls)

    def text(self) -> str:
        """Everything relayed so far as one text (content, tool names and arguments)."""
        parts = [*self._content]
        for call in self._tool_calls.values():
            parts.append(call.name)
            parts.extend(call.arguments)
        return "".join(parts)

    def _add_tool_delta(self, delta: ToolCallDelta) -> None:
        call = self._tool_calls.setdefault(delta.index, _PartialToolCall())
        if delta.id:
            call.id = delta.id
        if delta.function is not None:
            if delta.function.name:
                call.name += delta.function.name
            if delta.function.arguments:
                call.arguments.append(delta.function.arguments)


@dataclass(frozen=True)
class ResponseIdentity:
    """What every response and chunk of one completion shares."""

    completion_id: str
    created: int
    model: str
    node_id: str

    def completion(self, builder: CompletionBuilder, usage: CompletionUsage) -> ChatCompletion:
        return ChatCompletion(
            id=self.completion_id,
            created=self.created,
            model=self.model,
            choices=[
                Choice(
                    index=0,
                    message=builder.message(),
                    finish_reason=builder.finish_reason or "stop",
                )
            ],
            usage=usage,
            metadata=Metadata(node_id=self.node_id),
        )

    def chunk(
        self,
        delta: ChoiceDelta | None,
        *,
        finish_reason: FinishReason | None = None,
        usage: CompletionUsage | None = None,
    ) -> ChatCompletionChunk:
        choices = (
            []
            if delta is None
            else [ChunkChoice(index=0, delta=delta, finish_reason=finish_reason)]
        )
        return ChatCompletionChunk(
            id=self.completion_id,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=usage,
            metadata=Metadata(node_id=self.node_id),
        )
