"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``: Anthropic's Messages API.

A message is a chat completion (see :mod:`infermesh.chat.anthropic`): it is admitted,
held, routed, billed and recorded (as endpoint ``messages``) by the chat service. Every
error of these routes is in Anthropic's envelope ``{"type": "error", "error": {"type",
"message"}}``, with the request id in the ``request-id`` header besides ``x-request-id``.
The ``anthropic-version`` and ``anthropic-beta`` headers are accepted and not read.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, TypeAdapter, ValidationError

from infermesh.accounts.records import Principal
from infermesh.chat.anthropic import (
    Translated,
    error_type,
    message_events,
    message_from,
    message_id,
    translate_request,
)
from infermesh.chat.counting import ByteCounter, TokenCounter
from infermesh.chat.validation import check_request
from infermesh.errors import InfermeshError
from infermesh.gateway.deps import authenticate, get_record, get_services
from infermesh.gateway.disconnect import unless_client_leaves
from infermesh.gateway.errors import invalid_request_from
from infermesh.gateway.routes.chat import RunStream, answer_headers, stream_headers
from infermesh.gateway.state import Services
from infermesh.protocol.anthropic import (
    ErrorEvent,
    ErrorObject,
    Message,
    MessageCountRequest,
    MessageCreateRequest,
    StreamEvent,
    TokenCount,
)
from infermesh.telemetry import RequestRecord

router = APIRouter()
MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
ENDPOINT = "messages"
_MESSAGE_JSON = TypeAdapter(Message)
_ERROR_JSON = TypeAdapter(ErrorEvent)

Handler = Callable[[Request, Services, RequestRecord, Principal], Awaitable[Response]]


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


@router.post(MESSAGES_PATH, openapi_extra=_body_schema(MessageCreateRequest))
async def create_message(request: Request) -> Response:
    """An Anthropic message, streamed as server-sent events when ``stream`` is true."""
    return await _answer(request, _create_message)


@router.post(COUNT_TOKENS_PATH, openapi_extra=_body_schema(MessageCountRequest))
async def count_message_tokens(request: Request) -> Response:
    """The prompt tokens of a conversation, as the gateway counts them (no charge)."""
    return await _answer(request, _count_tokens)


async def _answer(request: Request, handler: Handler) -> Response:
    """``handler``'s answer, or its error in Anthropic's envelope."""
    record = await get_record(request)
    try:
        services = await get_services(request)
        principal = await authenticate(request, services, record)
        response = await handler(request, services, record, principal)
    except InfermeshError as exc:
        record.error_code = exc.code
        response = anthropic_error(exc, record.request_id)
    except ValidationError as exc:
        error = invalid_request_from(list(exc.errors()))
        record.error_code = error.code
        response = anthropic_error(error, record.request_id)
    response.headers["request-id"] = record.request_id
    return response


def anthropic_error(error: InfermeshError, request_id: str) -> Response:
    """``error`` in Anthropic's envelope, naming its parameter, with its status."""
    message = error.message
    if error.param and f"'{error.param}'" not in message and not message.startswith(error.param):
        message = f"{error.param}: {message}"
    body = ErrorEvent(
        error=ErrorObject(type=error_type(error), message=message), request_id=request_id
    )
    headers = {"request-id": request_id}
    if error.retry_after:
        headers["retry-after"] = str(max(1, math.ceil(error.retry_after)))
    return Response(
        _ERROR_JSON.dump_json(body),
        status_code=error.status_code,
        headers=headers,
        media_type="application/json",
    )


async def _create_message(
    request: Request, services: Services, record: RequestRecord, principal: Principal
) -> Response:
    body = MessageCreateRequest.model_validate_json(await request.body())
    translated = translate_request(body)
    try:
        if body.stream:
            return await _stream(request, services, record, principal, translated)
        work = services.chat.complete(translated.request, record, principal, endpoint=ENDPOINT)
        completed = await unless_client_leaves(request, work)
    except InfermeshError as exc:
        translated.rename_error(exc)
        raise
    message = message_from(completed.completion)
    return Response(
        _MESSAGE_JSON.dump_json(message),
        media_type="application/json",
        headers=answer_headers(completed.result),
    )


async def _stream(
    request: Request,
    services: Services,
    record: RequestRecord,
    principal: Principal,
    translated: Translated,
) -> Response:
    chat = services.chat
    started = chat.start(translated.request, record, principal, endpoint=ENDPOINT)
    run = await unless_client_leaves(request, started)
    try:
        generation, spec = run.generation, run.spec
        assert generation is not None and spec is not None
        events = message_events(
            chat.chunks(run, include_usage=True),
            message_id=message_id(run.id),
            model=generation.identity.model,
            input_tokens=_prompt_tokens(chat.context.counters.for_model(spec), translated),
        )
        headers = {**stream_headers(run), "request-id": record.request_id}
        return RunStream(_server_sent_events(events, record.request_id), run, headers)
    except BaseException as exc:
        await run.close(exc)
        raise


def _prompt_tokens(counter: TokenCounter, translated: Translated) -> int:
    """The prompt tokens ``message_start`` announces: the gateway's count where it knows
    the model's tokenizer, else 0 (a count by bytes is far above the real one). The
    billed count comes in ``message_delta`` either way."""
    if isinstance(counter, ByteCounter):
        return 0
    return counter.prompt_bound(translated.request)


async def _server_sent_events(
    events: AsyncIterator[StreamEvent], request_id: str
) -> AsyncIterator[bytes]:
    """Each event as ``event: <type>`` and its JSON (an error with the request id)."""
    async for event in events:
        if isinstance(event, ErrorEvent):
            event = event.model_copy(update={"request_id": request_id})
        payload = event.model_dump_json().encode()
        yield b"event: " + event.type.encode() + b"\ndata: " + payload + b"\n\n"


async def _count_tokens(
    request: Request, services: Services, record: RequestRecord, principal: Principal
) -> Response:
    body = MessageCountRequest.model_validate_json(await request.body())
    translated = translate_request(body)
    context = services.chat.context
    try:
        spec = context.catalog.get(body.model)
        check_request(translated.request, spec, max_image_bytes=context.max_image_bytes)
    except InfermeshError as exc:
        translated.rename_error(exc)
        raise
    counter = context.counters.for_model(spec)
    count = await asyncio.to_thread(counter.prompt_bound, translated.request)
    return Response(TokenCount(input_tokens=count).model_dump_json(), media_type="application/json")
