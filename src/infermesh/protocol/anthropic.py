"""Anthropic's Messages API: request, response, stream events and error envelope.

Only the fields infermesh understands are declared. Anything else a client sends is
kept (as on every wire type) so that the translation can refuse it by name: a field
the gateway cannot honour is never dropped silently. Content blocks, image sources and
tools of kinds infermesh does not serve parse as :class:`OtherBlock`, :class:`OtherSource`
and :class:`ServerTool`, for the same reason.

Union members are tagged with capitalized names, which the gateway leaves out of the
parameter names in its validation errors (``messages[0].content[1].source``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag

from infermesh.protocol.base import WireModel

# --- request -------------------------------------------------------------------------


class CacheControl(WireModel):
    """A prompt-cache breakpoint. infermesh keeps no prompt cache: it changes nothing."""

    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class InputTextBlock(WireModel):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: list[Any] | None = None


class Base64ImageSource(WireModel):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str


class OtherSource(WireModel):
    """An image source infermesh does not read (``url``, ``file``, …)."""

    type: str


def _source_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "Base64" if kind == "base64" else "Other"


ImageSource = Annotated[
    Annotated[Base64ImageSource, Tag("Base64")] | Annotated[OtherSource, Tag("Other")],
    Discriminator(_source_kind),
]


class InputImageBlock(WireModel):
    type: Literal["image"]
    source: ImageSource
    cache_control: CacheControl | None = None


class InputToolUseBlock(WireModel):
    """A tool call the assistant made earlier in the conversation."""

    type: Literal["tool_use"]
    id: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=64)
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class OtherBlock(WireModel):
    """A content block of a kind infermesh does not serve (``document``, ``thinking``, …)."""

    type: str


def _block_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return _BLOCK_TAGS.get(kind, "Other") if isinstance(kind, str) else "Other"


_BLOCK_TAGS = {"text": "Text", "image": "Image", "tool_use": "ToolUse", "tool_result": "ToolResult"}
_RESULT_BLOCK_TAGS = {"Text": "Text", "Image": "Image"}

ToolResultContentBlock = Annotated[
    Annotated[InputTextBlock, Tag("Text")]
    | Annotated[InputImageBlock, Tag("Image")]
    | Annotated[OtherBlock, Tag("Other")],
    Discriminator(lambda value: _RESULT_BLOCK_TAGS.get(_block_kind(value), "Other")),
]


def _text_or_blocks(value: Any) -> str:
    return "Text" if isinstance(value, str) else "Blocks"


ToolResultContent = Annotated[
    Annotated[str, Tag("Text")] | Annotated[list[ToolResultContentBlock], Tag("Blocks")],
    Discriminator(_text_or_blocks),
]


class ToolResultBlock(WireModel):
    """What a tool the assistant called answered (in a user message)."""

    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=200)
    content: ToolResultContent | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None


InputBlock = Annotated[
    Annotated[InputTextBlock, Tag("Text")]
    | Annotated[InputImageBlock, Tag("Image")]
    | Annotated[InputToolUseBlock, Tag("ToolUse")]
    | Annotated[ToolResultBlock, Tag("ToolResult")]
    | Annotated[OtherBlock, Tag("Other")],
    Discriminator(_block_kind),
]

MessageContent = Annotated[
    Annotated[str, Tag("Text")] | Annotated[list[InputBlock], Tag("Blocks")],
    Discriminator(_text_or_blocks),
]


class InputMessage(WireModel):
    role: Literal["user", "assistant", "system"]
    content: MessageContent


SystemPrompt = Annotated[
    Annotated[str, Tag("Text")] | Annotated[list[InputTextBlock], Tag("Blocks")],
    Discriminator(_text_or_blocks),
]


class CustomTool(WireModel):
    """A tool the client runs itself, described by a JSON schema of its input."""

    type: Literal["custom"] | None = None
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    input_schema: dict[str, Any]
    strict: bool | None = None
    cache_control: CacheControl | None = None
    eager_input_streaming: bool | None = None
    defer_loading: bool | None = None
    allowed_callers: list[str] | None = None
    input_examples: list[Any] | None = None


class ServerTool(WireModel):
    """A tool Anthropic's servers run or define (``web_search_…``, ``bash_…``, …)."""

    type: str
    name: str | None = None


def _tool_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "Custom" if kind in (None, "custom") else "Server"


AnyTool = Annotated[
    Annotated[CustomTool, Tag("Custom")] | Annotated[ServerTool, Tag("Server")],
    Discriminator(_tool_kind),
]


class ToolChoiceAuto(WireModel):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(WireModel):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(WireModel):
    type: Literal["tool"]
    name: str = Field(min_length=1, max_length=64)
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(WireModel):
    type: Literal["none"]


ToolChoice = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone,
    Field(discriminator="type"),
]


class ThinkingConfig(WireModel):
    type: Literal["enabled", "disabled", "adaptive", "between_tools"]
    budget_tokens: int | None = None
    display: Literal["summarized", "omitted"] | None = None


class JSONOutputFormat(WireModel):
    type: Literal["json_schema"]
    json_schema: dict[str, Any] = Field(alias="schema")


class OutputConfig(WireModel):
    effort: str | None = None
    format: JSONOutputFormat | None = None


class RequestMetadata(WireModel):
    user_id: str | None = Field(default=None, max_length=256)


class MessagesInput(WireModel):
    """What a conversation is: the body of ``POST /v1/messages/count_tokens``, and the
    part of ``POST /v1/messages`` that becomes the prompt."""

    model: str = Field(min_length=1, max_length=256)
    messages: list[InputMessage] = Field(min_length=1)
    system: SystemPrompt | None = None
    tools: list[AnyTool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None
    cache_control: CacheControl | None = None
    speed: Literal["standard", "fast"] | None = None


class MessageCountRequest(MessagesInput):
    """``POST /v1/messages/count_tokens``: a conversation. The sampling fields of a
    message are accepted too (clients send one body to both); they change no count."""

    max_tokens: int | None = Field(default=None, ge=1)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=1)
    metadata: RequestMetadata | None = None
    stream: bool | None = None
    service_tier: Literal["auto", "standard_only"] | None = None


class MessageCreateRequest(MessageCountRequest):
    """``POST /v1/messages``: ``max_tokens`` is required, as Anthropic requires it."""

    max_tokens: int = Field(ge=1)


# --- response ------------------------------------------------------------------------


class TextBlock(WireModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseBlock(WireModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


ContentBlock = Annotated[TextBlock | ToolUseBlock, Field(discriminator="type")]

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"]


class MessageUsage(WireModel):
    """Tokens of a message. infermesh keeps no prompt cache: its cache counts are 0."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class Message(WireModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentBlock]
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None
    usage: MessageUsage


class TokenCount(WireModel):
    """The answer of ``POST /v1/messages/count_tokens``."""

    input_tokens: int


# --- stream events -------------------------------------------------------------------


class MessageStartEvent(WireModel):
    type: Literal["message_start"] = "message_start"
    message: Message


class PingEvent(WireModel):
    type: Literal["ping"] = "ping"


class ContentBlockStartEvent(WireModel):
    type: Literal["content_block_start"] = "content_block_start"
    index: int
    content_block: ContentBlock


class TextDelta(WireModel):
    type: Literal["text_delta"] = "text_delta"
    text: str


class InputJSONDelta(WireModel):
    type: Literal["input_json_delta"] = "input_json_delta"
    partial_json: str


class ContentBlockDeltaEvent(WireModel):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: Annotated[TextDelta | InputJSONDelta, Field(discriminator="type")]


class ContentBlockStopEvent(WireModel):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int


class MessageDelta(WireModel):
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None


class MessageDeltaUsage(WireModel):
    """Cumulative counts at the end of a stream (they replace those of ``message_start``)."""

    output_tokens: int
    input_tokens: int | None = None


class MessageDeltaEvent(WireModel):
    type: Literal["message_delta"] = "message_delta"
    delta: MessageDelta
    usage: MessageDeltaUsage


class MessageStopEvent(WireModel):
    type: Literal["message_stop"] = "message_stop"


# --- errors --------------------------------------------------------------------------

ErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "timeout_error",
    "api_error",
    "overloaded_error",
]


class ErrorObject(WireModel):
    type: ErrorType
    message: str


class ErrorEvent(WireModel):
    """Anthropic's error envelope: the body of an error answer, and the ``error`` event
    that ends a stream which failed midway."""

    type: Literal["error"] = "error"
    error: ErrorObject
    request_id: str | None = None


StreamEvent = (
    MessageStartEvent
    | PingEvent
    | ContentBlockStartEvent
    | ContentBlockDeltaEvent
    | ContentBlockStopEvent
    | MessageDeltaEvent
    | MessageStopEvent
    | ErrorEvent
)
