"""A Responses request as a chat request: what infermesh cannot honour is refused, by
name, never dropped; chat's errors are renamed to the caller's fields."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from infermesh.errors import InvalidRequest
from infermesh.protocol import responses as wire
from infermesh.protocol.chat import (
    ChatCompletionRequest,
    ChatMessage,
    ImagePart,
    ImageURL,
    ResponseFormat,
    TextPart,
    ToolCall,
)
from infermesh.protocol.chat import ContentPart as ChatPart
from infermesh.protocol.chat import FunctionCall as ChatFunctionCall
from infermesh.protocol.responses import ResponseRequest

# --- what is refused -----------------------------------------------------------------

_NO_STORE = "infermesh stores no responses or conversations, so send the whole conversation in"
_NEUTRAL_ONLY: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("previous_response_id", lambda v: v is None, f"{_NO_STORE} 'input' instead."),
    ("conversation", lambda v: v is None, f"{_NO_STORE} 'input' instead."),
    ("prompt", lambda v: v is None, "infermesh has no stored prompts: send 'instructions'."),
    ("background", lambda v: not v, "infermesh does not run responses in the background."),
    ("top_logprobs", lambda v: not v, "infermesh does not return log probabilities."),
    ("context_management", lambda v: not v, "infermesh does not compact conversations."),
    (
        "service_tier",
        lambda v: v in (None, "auto", "default"),
        "infermesh has one service tier ('auto' or 'default').",
    ),
)
_INCLUDABLE = frozenset({"reasoning.encrypted_content"})  # vacuous: no reasoning items
_ITEM_REFUSALS = {
    "reasoning": "infermesh models produce no reasoning items, so none can be sent back.",
    "item_reference": f"{_NO_STORE} 'input' instead of item references.",
}


def _refuse(param: str, message: str) -> NoReturn:
    raise InvalidRequest(message, param=param, code="unsupported_parameter")


def _check_options(request: ResponseRequest) -> None:
    for param, neutral, message in _NEUTRAL_ONLY:
        if not neutral(getattr(request, param)):
            _refuse(param, f"'{param}' is not supported: {message}")
    reasoning = request.reasoning
    if reasoning is not None:
        if reasoning.effort not in (None, "none"):
            _refuse(
                "reasoning.effort",
                "The model does not reason: 'reasoning.effort' must be null or 'none'.",
            )
        if reasoning.summary is not None or reasoning.generate_summary is not None:
            _refuse(
                "reasoning.summary", "The model does not reason, so it has no reasoning summary."
            )
    for value in request.include or []:
        if value not in _INCLUDABLE:
            _refuse(
                "include",
                f"'include' value '{value}' is not supported: infermesh returns no log "
                "probabilities, hosted tool results or stored items.",
            )
    verbosity = request.text.verbosity if request.text is not None else None
    if verbosity not in (None, "medium"):
        _refuse("text.verbosity", "The model has no verbosity setting: only 'medium' is accepted.")


# --- request ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Translation:
    """A Responses request as a chat request; ``sources`` names the request parameter
    each chat message came from, so that chat's errors can name the caller's field."""

    request: ResponseRequest
    chat: ChatCompletionRequest
    sources: tuple[str, ...]

    def explain(self, error: InvalidRequest) -> InvalidRequest:
        """``error`` (about the chat request) in the terms of the Responses request."""
        if error.param is None:
            return error
        param = _responses_param(error.param, self.sources)
        if param == error.param:
            return error
        message = error.message.replace(error.param, param)
        return InvalidRequest(message, param=param, code=error.code)


_CHAT_MESSAGE = re.compile(r"^messages\[(\d+)\]")
_CHAT_TOOL = re.compile(r"^tools\[(\d+)\]\.function")
_RENAMED = {"max_completion_tokens": "max_output_tokens", "response_format": "text.format"}


def _responses_param(param: str, sources: tuple[str, ...]) -> str:
    message = _CHAT_MESSAGE.match(param)
    if message is not None and int(message[1]) < len(sources):
        return sources[int(message[1])] + param[message.end() :]
    param = _CHAT_TOOL.sub(r"tools[\1]", param)
    for old, new in _RENAMED.items():
        if param.startswith(old):
            return new + param[len(old) :]
    return param


_SAMPLING_EXTRAS = (
    "seed", "stop", "frequency_penalty", "presence_penalty",
    "top_k", "min_p", "repetition_penalty", "logit_bias",
)  # fmt: skip
"""Fields beyond the Responses API that chat honours, taken as chat takes them."""


def translate(request: ResponseRequest) -> Translation:
    """The chat request that runs ``request``; :class:`InvalidRequest` (naming the
    field) for anything it asks that infermesh cannot do."""
    _check_options(request)
    conversation = _Conversation()
    if request.instructions is not None:
        conversation.add(ChatMessage(role="system", content=request.instructions), "instructions")
    if isinstance(request.input, str):
        conversation.add(ChatMessage(role="user", content=request.input), "input")
    else:
        for index, item in enumerate(request.input):
            conversation.add_item(item, f"input[{index}]")
    if not conversation.messages:
        raise InvalidRequest("'input' must not be empty.", param="input")
    fields: dict[str, Any] = {
        "model": request.model,
        "messages": conversation.messages,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_completion_tokens": request.max_output_tokens,
        "tools": _chat_tools(request),
        "tool_choice": _chat_tool_choice(request),
        "parallel_tool_calls": request.parallel_tool_calls,
        "response_format": _response_format(request.text),
        "user": request.user,
        "stream": True if request.stream else None,
    }
    extras = request.model_extra or {}
    fields.update({name: extras[name] for name in _SAMPLING_EXTRAS if name in extras})
    chat = ChatCompletionRequest.model_validate(
        {name: value for name, value in fields.items() if value is not None}
    )
    return Translation(request, chat, tuple(conversation.sources))


def _chat_tools(request: ResponseRequest) -> list[dict[str, Any]] | None:
    if not request.tools:
        return None
    tools = []
    for index, tool in enumerate(request.tools):
        if not isinstance(tool, wire.FunctionTool):
            _refuse(
                f"tools[{index}].type",
                f"Tools of type '{tool.type}' are not available on infermesh: "
                "only function tools are (the client runs them).",
            )
        definition = tool.model_dump(include={"name", "description", "parameters", "strict"})
        tools.append({"type": "function", "function": definition})
    return tools


def _chat_tool_choice(request: ResponseRequest) -> Any:
    choice = request.tool_choice
    if choice is None or isinstance(choice, str):
        return choice
    if not isinstance(choice, wire.FunctionToolChoice):
        _refuse(
            "tool_choice.type",
            f"tool_choice of type '{choice.type}' is not supported: use 'auto', 'none', "
            "'required' or a function.",
        )
    return {"type": "function", "function": {"name": choice.name}}


def _response_format(text: wire.TextConfig | None) -> ResponseFormat | None:
    spec = text.format if text is not None else None
    if spec is None or spec.type == "text":
        return None
    if spec.type == "json_object":
        return ResponseFormat(type="json_object")
    if not spec.name:
        raise InvalidRequest("A json_schema format needs a 'name'.", param="text.format.name")
    if spec.schema_ is None:
        raise InvalidRequest("A json_schema format needs a 'schema'.", param="text.format.schema")
    schema = spec.model_dump(include={"name", "schema_", "strict", "description"}, by_alias=True)
    return ResponseFormat(
        type="json_schema",
        json_schema={key: value for key, value in schema.items() if value is not None},
    )


class _Conversation:
    """The chat messages of a request's input items, each with the parameter it came
    from; the function calls seen so far, by ``call_id``."""

    def __init__(self) -> None:
        self.messages: list[ChatMessage] = []
        self.sources: list[str] = []
        self._call_ids: set[str] = set()

    def add(self, message: ChatMessage, source: str) -> None:
        self.messages.append(message)
        self.sources.append(source)

    def add_item(self, item: Any, source: str) -> None:
        if isinstance(item, wire.InputMessage):
            self.add(_chat_message(item, source), source)
        elif isinstance(item, wire.FunctionCall):
            self._add_call(item, source)
        elif isinstance(item, wire.FunctionCallOutput):
            self._add_output(item, source)
        else:
            message = _ITEM_REFUSALS.get(
                item.type,
                "Only 'message', 'function_call' and 'function_call_output' items are supported.",
            )
            _refuse(
                f"{source}.type", f"Input items of type '{item.type}' are not supported: {message}"
            )

    def _add_call(self, item: wire.FunctionCall, source: str) -> None:
        """A function call joins the assistant message before it: one turn of chat."""
        function = ChatFunctionCall(name=item.name, arguments=item.arguments)
        call = ToolCall(id=item.call_id, type="function", function=function)
        self._call_ids.add(item.call_id)
        last = self.messages[-1] if self.messages else None
        if last is not None and last.role == "assistant" and self.sources[-1] != "instructions":
            last.tool_calls = [*(last.tool_calls or []), call]
        else:
            self.add(ChatMessage(role="assistant", tool_calls=[call]), source)

    def _add_output(self, item: wire.FunctionCallOutput, source: str) -> None:
        if item.call_id not in self._call_ids:
            raise InvalidRequest(
                f"No function_call with call_id '{item.call_id}' comes before this output. "
                "infermesh stores nothing between requests: send the function_call item too.",
                param=f"{source}.call_id",
            )
        content: str | list[ChatPart] = (
            item.output
            if isinstance(item.output, str)
            else [*_texts(item.output, f"{source}.output")]
        )
        self.add(ChatMessage(role="tool", tool_call_id=item.call_id, content=content), source)


def _chat_message(message: wire.InputMessage, source: str) -> ChatMessage:
    if isinstance(message.content, str):
        return ChatMessage(role=message.role, content=message.content)
    param = f"{source}.content"
    if message.role == "assistant":  # one text, which tool calls may join
        texts = _texts(message.content, param)
        return ChatMessage(role="assistant", content="".join(part.text for part in texts))
    parts = [_chat_part(part, f"{param}[{index}]") for index, part in enumerate(message.content)]
    return ChatMessage(role=message.role, content=parts)


def _texts(parts: list[wire.ContentPart], param: str) -> list[TextPart]:
    texts: list[TextPart] = []
    for index, part in enumerate(parts):
        chat_part = _chat_part(part, f"{param}[{index}]")
        if not isinstance(chat_part, TextPart):
            _refuse(f"{param}[{index}]", "Only text is accepted here.")
        texts.append(chat_part)
    return texts


def _chat_part(part: wire.ContentPart, param: str) -> ChatPart:
    if isinstance(part, wire.InputText | wire.OutputText):
        return TextPart(type="text", text=part.text)
    if isinstance(part, wire.Refusal):
        return TextPart(type="text", text=part.refusal)
    if not isinstance(part, wire.InputImage):
        _refuse(
            f"{param}.type",
            f"Content of type '{part.type}' is not supported: only input_text and "
            "input_image (by URL) are.",
        )
    if part.file_id is not None:
        _refuse(f"{param}.file_id", "infermesh has no file storage: send the image as 'image_url'.")
    if part.image_url is None:
        raise InvalidRequest("An input_image needs an 'image_url'.", param=f"{param}.image_url")
    if part.detail == "original":
        _refuse(
            f"{param}.detail", "Image detail 'original' is not supported: use auto, low or high."
        )
    return ImagePart(type="image_url", image_url=ImageURL(url=part.image_url, detail=part.detail))
