"""Checks of a chat request against the model it names, before anything is dispatched,
and the copy of it that an engine may see."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from infermesh.catalog.spec import ModelSpec
from infermesh.chat.images import check_image_url
from infermesh.errors import InvalidRequest
from infermesh.protocol.chat import ChatCompletionRequest, ImagePart, NamedToolChoice
from infermesh.protocol.engine_fields import ENGINE_EXTRA_FIELDS as ENGINE_EXTRA_FIELDS
from infermesh.protocol.engine_fields import declared_fields
from infermesh.protocol.json_depth import MAX_JSON_DEPTH, structure_nests_deeper_than

MAX_STOP_SEQUENCES = 4


def check_request(request: ChatCompletionRequest, spec: ModelSpec, *, max_image_bytes: int) -> None:
    """Raise :class:`InvalidRequest` for anything the model or the gateway cannot honour."""
    if spec.kind != "chat":
        raise InvalidRequest(
            f"'{spec.id}' is an embedding model; it does not chat. Send it to "
            "POST /v1/embeddings, or use a chat model (GET /v1/models lists each model's "
            "kind and endpoints).",
            param="model",
            code="model_not_chat",
        )
    _check_depth(request)
    if request.n is not None and request.n > 1:
        raise InvalidRequest("Only n=1 is supported.", param="n", code="unsupported_parameter")
    if request.stream_options is not None and not request.stream:
        raise InvalidRequest(
            "stream_options is only allowed when stream is true.", param="stream_options"
        )
    _check_stop(request)
    _check_max_tokens(request, spec)
    _check_tools(request, spec)
    _check_messages(request, spec, max_image_bytes=max_image_bytes)


def _check_stop(request: ChatCompletionRequest) -> None:
    stops = request.stop_list()
    if len(stops) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(
            f"At most {MAX_STOP_SEQUENCES} stop sequences are allowed.", param="stop"
        )
    if any(stop == "" for stop in stops):
        raise InvalidRequest("Stop sequences must not be empty.", param="stop")


def _check_max_tokens(request: ChatCompletionRequest, spec: ModelSpec) -> None:
    requested = request.requested_max_tokens()
    if requested is not None and requested > spec.context_length:
        param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        raise InvalidRequest(
            f"{param} is {requested}, more than the context length of '{spec.id}' "
            f"({spec.context_length} tokens).",
            param=param,
        )


def _check_tools(request: ChatCompletionRequest, spec: ModelSpec) -> None:
    if request.tools and not spec.capabilities.tools:
        raise InvalidRequest(
            f"The model '{spec.id}' does not support tools.",
            param="tools",
            code="tools_not_supported",
        )
    choice = request.tool_choice
    if choice is None or choice == "none":
        return
    if not request.tools:
        raise InvalidRequest("tool_choice needs tools.", param="tool_choice")
    if isinstance(choice, NamedToolChoice):
        names = {tool.function.name for tool in request.tools}
        if choice.function.name not in names:
            raise InvalidRequest(
                f"tool_choice names '{choice.function.name}', which is not in tools.",
                param="tool_choice",
            )


def _check_messages(
    request: ChatCompletionRequest, spec: ModelSpec, *, max_image_bytes: int
) -> None:
    for index, message in enumerate(request.messages):
        if message.role == "tool" and not message.tool_call_id:
            raise InvalidRequest(
                "Messages with role 'tool' need a tool_call_id.",
                param=f"messages[{index}].tool_call_id",
            )
        if not isinstance(message.content, list):
            continue
        for part_index, part in enumerate(message.content):
            if not isinstance(part, ImagePart):
                continue
            param = f"messages[{index}].content[{part_index}].image_url"
            if not spec.capabilities.vision:
                raise InvalidRequest(
                    f"The model '{spec.id}' does not accept images.",
                    param=param,
                    code="vision_not_supported",
                )
            check_image_url(part.image_url.url, param=param, max_bytes=max_image_bytes)


def _check_depth(request: ChatCompletionRequest) -> None:
    for param, value in _free_form_values(request, prefix=""):
        if structure_nests_deeper_than(value, MAX_JSON_DEPTH):
            raise InvalidRequest(
                f"'{param}' nests JSON objects and arrays more than {MAX_JSON_DEPTH} levels deep.",
                param=param,
                code="json_too_deep",
            )


def _free_form_values(model: BaseModel, *, prefix: str) -> Iterator[tuple[str, Any]]:
    """The objects and arrays in ``model`` that are not models themselves, with their
    parameter names (``tools[0].function.parameters``), undeclared fields included."""
    fields = [(name, getattr(model, name)) for name in type(model).model_fields]
    for name, value in [*fields, *(model.model_extra or {}).items()]:
        yield from _free_form_in(value, f"{prefix}.{name}" if prefix else name)


def _free_form_in(value: Any, param: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, BaseModel):
        yield from _free_form_values(value, prefix=param)
    elif isinstance(value, list) and any(isinstance(item, BaseModel) for item in value):
        for index, item in enumerate(value):
            yield from _free_form_in(item, f"{param}[{index}]")
    elif isinstance(value, dict | list):
        yield param, value


def engine_request(request: ChatCompletionRequest) -> ChatCompletionRequest:
    """A copy of ``request`` fit for an engine: of the fields the protocol models do not
    declare, only :data:`ENGINE_EXTRA_FIELDS` at the top level are kept (see
    :mod:`infermesh.protocol.engine_fields` for why); messages, tools and the other
    nested objects keep only their declared fields. ``request`` is left as it is."""
    dumped = request.model_dump(exclude_unset=True)
    kept = declared_fields(request, dumped, keep=ENGINE_EXTRA_FIELDS)
    return ChatCompletionRequest.model_validate(kept)
