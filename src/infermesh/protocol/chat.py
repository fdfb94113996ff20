"""OpenAI chat completions: request, response and stream chunk."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from infermesh.protocol.base import WireModel

# --- request -------------------------------------------------------------------------


class ImageURL(WireModel):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(WireModel):
    type: Literal["text"]
    text: str


class ImagePart(WireModel):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class FunctionCall(WireModel):
    name: str
    arguments: str


class ToolCall(WireModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(WireModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(WireModel):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(WireModel):
    type: Literal["function"]
    function: FunctionDefinition


class ToolChoiceFunction(WireModel):
    name: str


class NamedToolChoice(WireModel):
    type: Literal["function"]
    function: ToolChoiceFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ResponseFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class StreamOptions(WireModel):
    include_usage: bool | None = None


class ChatCompletionRequest(WireModel):
    """``POST /v1/chat/completions``. Unknown fields are accepted and ignored."""

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    n: int | None = Field(default=None, ge=1)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens else self.max_tokens


# --- response ------------------------------------------------------------------------


MAX_TOKEN_COUNT = 2**53 - 1
"""The largest token count accepted anywhere (a JSON-safe integer); a peer that sends
more is speaking nonsense, and the gateway bounds smaller claims by its own counts."""


class Usage(WireModel):
    prompt_tokens: int = Field(ge=0, le=MAX_TOKEN_COUNT)
    completion_tokens: int = Field(ge=0, le=MAX_TOKEN_COUNT)
    total_tokens: int = Field(ge=0, le=2 * MAX_TOKEN_COUNT)


class CompletionUsage(Usage):
    """Usage as a client sees it: the tokens and what they cost.

    ``cost`` is in USD, as OpenRouter reports it (a display value); ``cost_micro_usd``
    is the exact integer charged.
    """

    cost: float | None = None
    cost_micro_usd: int | None = None


FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


class AssistantMessage(WireModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None


class Choice(WireModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason | None
    logprobs: None = None


class ResponseMetadata(WireModel):
    node_id: str


class ChatCompletion(WireModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    system_fingerprint: str | None = None
    metadata: ResponseMetadata


# --- stream chunk --------------------------------------------------------------------


class FunctionCallDelta(WireModel):
    name: str | None = None
    arguments: str | None = None


MAX_TOOL_CALLS = 128
"""Tool calls one answer may hold (a delta's ``index`` is below this)."""


class ToolCallDelta(WireModel):
    index: int = Field(ge=0, lt=MAX_TOOL_CALLS)
    id: str | None = Field(default=None, max_length=200)
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


class ChoiceDelta(WireModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(WireModel):
    index: int
    delta: ChoiceDelta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(WireModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None
    metadata: ResponseMetadata | None = None
