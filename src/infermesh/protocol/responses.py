"""OpenAI Responses API (``POST /v1/responses``): request, response object, stream events.

The request types are lenient where clients send things infermesh cannot do (hosted
tools, reasoning items, file inputs): those parse as the ``Other…`` types, so that the
translation (:mod:`infermesh.chat.responses`) can refuse them by name instead of with a
union error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, StringConstraints, Tag

from infermesh.protocol.base import WireModel


def _tag_by_type(known: dict[str, str], other: str) -> Callable[[Any], str | None]:
    """A union discriminator: the tag of the ``type`` field if known, else ``other``; none
    for what is not an object. A message may omit its ``type`` (``{"role": "user",
    "content": "hi"}``)."""

    def tag(value: Any) -> str | None:
        if isinstance(value, dict):
            kind = value.get("type")
            if kind is None and "role" in value:
                kind = "message"
        elif isinstance(value, WireModel):
            kind = getattr(value, "type", None)
        else:
            return None
        return known.get(kind, other) if isinstance(kind, str) else other

    return tag


def _by_type(known: dict[str, str], other: str, what: str) -> Discriminator:
    return Discriminator(
        _tag_by_type(known, other),
        custom_error_type="invalid_type",
        custom_error_message=f"{what} must be an object with a 'type'",
    )


def _text_or(tag: str, what: str) -> Discriminator:
    """Of a string or a list: which one (an error saying so for anything else)."""

    def choose(value: Any) -> str | None:
        if isinstance(value, str):
            return "Text"
        return tag if isinstance(value, list) else None

    return Discriminator(
        choose,
        custom_error_type="invalid_type",
        custom_error_message=f"{what} must be a string or an array",
    )


# --- request: content parts ----------------------------------------------------------


class InputText(WireModel):
    type: Literal["input_text"]
    text: str


class OutputText(WireModel):
    """Text the model wrote: in an answer, or in the history a client sends back."""

    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] | None = Field(default_factory=list)


class InputImage(WireModel):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["auto", "low", "high", "original"] | None = None


class Refusal(WireModel):
    type: Literal["refusal"]
    refusal: str


class OtherPart(WireModel):
    """A content part infermesh does not take (``input_file``, ``input_audio``, …)."""

    type: str


ContentPart = Annotated[
    Annotated[InputText, Tag("InputText")]
    | Annotated[OutputText, Tag("OutputText")]
    | Annotated[InputImage, Tag("InputImage")]
    | Annotated[Refusal, Tag("Refusal")]
    | Annotated[OtherPart, Tag("OtherPart")],
    _by_type(
        {
            "input_text": "InputText",
            "output_text": "OutputText",
            "input_image": "InputImage",
            "refusal": "Refusal",
        },
        "OtherPart",
        "A content part",
    ),
]

Content = Annotated[
    Annotated[str, Tag("Text")] | Annotated[list[ContentPart], Tag("Parts")],
    _text_or("Parts", "Content"),
]
"""A string, or a list of content parts."""

# --- request: input items ------------------------------------------------------------

ItemStatus = Literal["in_progress", "completed", "incomplete"]


class InputMessage(WireModel):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: Content


class FunctionCall(WireModel):
    """A call of a function tool: in an answer, or in the history a client sends back."""

    type: Literal["function_call"] = "function_call"
    id: str | None = None
    call_id: str = Field(min_length=1)
    name: str
    arguments: str
    status: ItemStatus | None = None


class FunctionCallOutput(WireModel):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: Content


class OtherItem(WireModel):
    """An input item infermesh does not take (``reasoning``, ``item_reference``, …)."""

    type: str


InputItem = Annotated[
    Annotated[InputMessage, Tag("InputMessage")]
    | Annotated[FunctionCall, Tag("FunctionCall")]
    | Annotated[FunctionCallOutput, Tag("FunctionCallOutput")]
    | Annotated[OtherItem, Tag("OtherItem")],
    _by_type(
        {
            "message": "InputMessage",
            "function_call": "FunctionCall",
            "function_call_output": "FunctionCallOutput",
        },
        "OtherItem",
        "An input item",
    ),
]

# --- request: tools and options ------------------------------------------------------


class FunctionTool(WireModel):
    """A function tool, flat (``name`` beside ``type``, not under ``function``)."""

    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class OtherTool(WireModel):
    """A tool infermesh does not run (``web_search``, ``file_search``, ``mcp``, …)."""

    type: str


ResponseTool = Annotated[
    Annotated[FunctionTool, Tag("FunctionTool")] | Annotated[OtherTool, Tag("OtherTool")],
    _by_type({"function": "FunctionTool"}, "OtherTool", "A tool"),
]


class FunctionToolChoice(WireModel):
    type: Literal["function"]
    name: str


class OtherToolChoice(WireModel):
    type: str


def _tool_choice_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "Mode"
    return _tag_by_type({"function": "FunctionToolChoice"}, "OtherToolChoice")(value)


ToolChoiceMode = Literal["none", "auto", "required"]
ResponseToolChoice = Annotated[
    Annotated[ToolChoiceMode, Tag("Mode")]
    | Annotated[FunctionToolChoice, Tag("FunctionToolChoice")]
    | Annotated[OtherToolChoice, Tag("OtherToolChoice")],
    Discriminator(
        _tool_choice_tag,
        custom_error_type="invalid_type",
        custom_error_message="tool_choice must be a string or an object with a 'type'",
    ),
]


class TextFormat(WireModel):
    """``text.format``; ``name``, ``schema``, ``strict`` and ``description`` belong to
    ``json_schema``."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, max_length=64)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextConfig(WireModel):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(WireModel):
    effort: str | None = None
    summary: str | None = None
    generate_summary: str | None = None


MetadataKey = Annotated[str, StringConstraints(max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]


class ResponseRequest(WireModel):
    """``POST /v1/responses``. Unknown fields are accepted and ignored; known fields that
    infermesh cannot honour are refused by the translation unless they are neutral."""

    model: str = Field(min_length=1)
    input: Annotated[
        Annotated[str, Tag("Text")] | Annotated[list[InputItem], Tag("Items")],
        _text_or("Items", "input"),
    ]
    instructions: str | None = None
    tools: list[ResponseTool] | None = None
    tool_choice: ResponseToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    text: TextConfig | None = None
    user: str | None = None
    metadata: dict[MetadataKey, MetadataValue] | None = Field(default=None, max_length=16)
    stream: bool | None = False
    store: bool | None = None
    # Accepted only when neutral (see infermesh.chat.responses):
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    background: bool | None = None
    prompt: dict[str, Any] | None = None
    reasoning: ReasoningConfig | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_tool_calls: int | None = Field(default=None, ge=1)
    service_tier: str | None = None
    context_management: list[dict[str, Any]] | None = None


# --- response object -----------------------------------------------------------------


class OutputMessage(WireModel):
    type: Literal["message"] = "message"
    id: str
    role: Literal["assistant"] = "assistant"
    status: ItemStatus
    content: list[OutputText]


OutputItem = Annotated[OutputMessage | FunctionCall, Field(discriminator="type")]


class InputTokensDetails(WireModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(WireModel):
    reasoning_tokens: int = 0


class ResponseUsage(WireModel):
    """Usage as the Responses API names it, with what it cost (as in chat's usage)."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    cost: float | None = None
    cost_micro_usd: int | None = None


IncompleteReason = Literal["max_output_tokens", "content_filter"]


class IncompleteDetails(WireModel):
    reason: IncompleteReason


class ResponseError(WireModel):
    code: str
    message: str


ResponseStatus = Literal["in_progress", "completed", "incomplete", "failed"]


class ResponseObject(WireModel):
    """The ``response`` object; the request's settings are echoed as OpenAI does (tools,
    tool choice and text format as the client sent them)."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None = None
    status: ResponseStatus
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    usage: ResponseUsage | None = None
    instructions: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    tools: list[dict[str, Any]] = Field(default_factory=list)
    tool_choice: str | dict[str, Any] = "auto"
    parallel_tool_calls: bool = True
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    reasoning: ReasoningConfig = Field(default_factory=ReasoningConfig)
    truncation: Literal["auto", "disabled"] = "disabled"
    user: str | None = None
    store: bool = False
    background: bool = False
    previous_response_id: None = None


# --- stream events -------------------------------------------------------------------


LifecycleType = Literal[
    "response.created",
    "response.in_progress",
    "response.completed",
    "response.incomplete",
    "response.failed",
]


class ResponseEvent(WireModel):
    """A step in the response's life, with the whole response as it stands."""

    type: LifecycleType
    sequence_number: int
    response: ResponseObject


class OutputItemEvent(WireModel):
    type: Literal["response.output_item.added", "response.output_item.done"]
    sequence_number: int
    output_index: int
    item: OutputItem


PartEventType = Literal["response.content_part.added", "response.content_part.done"]


class ContentPartEvent(WireModel):
    type: PartEventType
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    part: OutputText


class OutputTextDelta(WireModel):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[Any] = Field(default_factory=list)


class OutputTextDone(WireModel):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Any] = Field(default_factory=list)


class FunctionCallArgumentsDelta(WireModel):
    type: Literal["response.function_call_arguments.delta"] = (
        "response.function_call_arguments.delta"
    )
    sequence_number: int
    item_id: str
    output_index: int
    delta: str


class FunctionCallArgumentsDone(WireModel):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    sequence_number: int
    item_id: str
    output_index: int
    name: str
    arguments: str


StreamEvent = (
    ResponseEvent
    | OutputItemEvent
    | ContentPartEvent
    | OutputTextDelta
    | OutputTextDone
    | FunctionCallArgumentsDelta
    | FunctionCallArgumentsDone
)
