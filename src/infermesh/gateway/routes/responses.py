"""``POST /v1/responses``: OpenAI's Responses API, stateless, run as a chat completion
(the translation is :mod:`infermesh.chat.responses`; admission, billing and routing are
the chat run's own)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from infermesh.chat.responses import ResponseStream, Translation, response_from, translate
from infermesh.chat.run import ChatRun
from infermesh.chat.service import ChatService
from infermesh.errors import InvalidRequest
from infermesh.gateway.deps import authenticate, get_record, get_services
from infermesh.gateway.disconnect import unless_client_leaves
from infermesh.gateway.errors import invalid_request_from
from infermesh.gateway.routes.chat import RunStream, answer_headers, stream_headers
from infermesh.protocol.chat import ChatCompletionChunk
from infermesh.protocol.errors import ErrorBody
from infermesh.protocol.responses import ResponseRequest, StreamEvent
from infermesh.telemetry import where_it_failed

logger = logging.getLogger(__name__)
router = APIRouter()
RESPONSES_PATH = "/v1/responses"
ENDPOINT = "responses"
"""The API name on the usage records of these requests."""
_STREAM_FAILED = ErrorBody(
    message="The stream failed on the server.", type="server_error", code="stream_failed"
)


def parse_response_request(body: bytes) -> ResponseRequest:
    try:
        return ResponseRequest.model_validate_json(body)
    except ValidationError as exc:
        raise invalid_request_from(list(exc.errors())) from None


@router.post(
    RESPONSES_PATH,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ResponseRequest.model_json_schema()}},
        }
    },
)
async def create_response(request: Request) -> Response:
    """A model response, streamed as server-sent events when ``stream`` is true. Nothing
    is stored: ``previous_response_id`` and the like are refused (see the translation)."""
    services = await get_services(request)
    record = await get_record(request)
    principal = await authenticate(request, services, record)
    translation = translate(parse_response_request(await request.body()))
    chat = services.chat
    try:
        if not translation.request.stream:
            work = chat.complete(translation.chat, record, principal, endpoint=ENDPOINT)
            completed = await unless_client_leaves(request, work)
            answer = response_from(
                completed.completion, translation.request, completed_at=int(time.time())
            )
            body = answer.model_dump_json(by_alias=True)
            return Response(
                body, media_type="application/json", headers=answer_headers(completed.result)
            )
        started = chat.start(translation.chat, record, principal, endpoint=ENDPOINT)
        run = await unless_client_leaves(request, started)
    except InvalidRequest as exc:
        raise translation.explain(exc) from None
    return await _stream(chat, run, translation)


async def _stream(chat: ChatService, run: ChatRun, translation: Translation) -> Response:
    """The events of a started run, in a response that closes the run however it ends."""
    try:
        generation = run.generation
        assert generation is not None
        stream = ResponseStream(translation.request, generation.identity)
        events = _server_sent_events(chat.chunks(run, include_usage=True), stream)
        return RunStream(events, run, stream_headers(run))
    except BaseException as exc:
        await run.close(exc)
        raise


async def _server_sent_events(
    chunks: AsyncIterator[str | ChatCompletionChunk | ErrorBody], stream: ResponseStream
) -> AsyncIterator[bytes]:
    """Each event as ``event: <type>`` and ``data: <json>``; the stream ends with its
    ``response.completed`` (``.incomplete``, ``.failed``) event."""
    try:
        for event in stream.opening():
            yield _frame(event)
        async for chunk in chunks:
            for event in stream.add(chunk):
                yield _frame(event)
        for event in stream.closing(completed_at=int(time.time())):
            yield _frame(event)
    except Exception as exc:  # a stream always ends with an event saying how
        # logged without its message: it may quote the answer
        logger.error("responses stream failed: %s", where_it_failed(exc))
        for event in stream.add(_STREAM_FAILED):
            yield _frame(event)


def _frame(event: StreamEvent) -> bytes:
    data = event.model_dump_json(by_alias=True)
    return f"event: {event.type}\ndata: {data}\n\n".encode()
