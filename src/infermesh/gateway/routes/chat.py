"""``POST /v1/chat/completions``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import TypeAdapter, ValidationError
from starlette.types import Receive, Scope, Send

from infermesh.chat.assembly import ResponseIdentity
from infermesh.chat.run import ChatRun, RunResult
from infermesh.gateway.deps import authenticate, get_record, get_services
from infermesh.gateway.disconnect import unless_client_leaves
from infermesh.gateway.errors import invalid_request_from
from infermesh.gateway.routes.results import enqueue_job, prefers_async
from infermesh.protocol.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from infermesh.protocol.chat import ChoiceDelta as Delta
from infermesh.protocol.errors import ErrorBody, ErrorEnvelope

router = APIRouter()
CHAT_PATH = "/v1/chat/completions"
_COMPLETION_JSON = TypeAdapter(ChatCompletion)
_CHUNK_JSON = TypeAdapter(ChatCompletionChunk)
_ERROR_JSON = TypeAdapter(ErrorEnvelope)


class RunStream(StreamingResponse):
    """An SSE response that always closes its run (stops the job, settles), even if
    never iterated."""

    def __init__(self, content: Any, run: ChatRun, headers: dict[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._run.close()


async def server_sent_events(
    chunks: AsyncIterator[str | ChatCompletionChunk | ErrorBody], identity: ResponseIdentity
) -> AsyncIterator[bytes]:
    """Each chunk as one event (an error in OpenAI's envelope), then ``[DONE]``; each
    serialized once, straight to the bytes that are sent. A chunk of text only is put
    into the stream's own event template (see :func:`text_event`)."""
    text_event = text_event_of(identity)
    async for chunk in chunks:
        if isinstance(chunk, str):
            yield text_event(chunk)
            continue
        if isinstance(chunk, ErrorBody):
            payload = _ERROR_JSON.dump_json(ErrorEnvelope(error=chunk))
        else:
            payload = _CHUNK_JSON.dump_json(chunk, exclude_none=True)
        yield b"data: " + payload + b"\n\n"
    yield b"data: [DONE]\n\n"


_MARK = "infermesh-text-7f3a9c"


def text_event_of(identity: ResponseIdentity) -> Callable[[str], bytes]:
    """How a stream's text-only chunks are framed: the chunk with a marker as its text,
    serialized once, around the text serialized by orjson (the same JSON as pydantic
    makes of the whole chunk, at a fraction of the cost)."""
    sample = _CHUNK_JSON.dump_json(identity.chunk(Delta(content=_MARK)), exclude_none=True)
    prefix, mark, suffix = sample.partition(orjson.dumps(_MARK))
    if not mark or _MARK.encode() in prefix + suffix:  # the marker is not where it must be
        return lambda text: (
            b"data: "
            + _CHUNK_JSON.dump_json(identity.chunk(Delta(content=text)), exclude_none=True)
            + b"\n\n"
        )
    head, tail = b"data: " + prefix, suffix + b"\n\n"
    return lambda text: head + orjson.dumps(text) + tail


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise invalid_request_from(list(exc.errors())) from None


@router.post(
    CHAT_PATH,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ChatCompletionRequest.model_json_schema()}},
        }
    },
)
async def create_chat_completion(request: Request) -> Response:
    """Chat completion, streamed as server-sent events when ``stream`` is true.

    The services, the record and the caller are looked up here rather than as FastAPI
    dependencies: resolving dependencies was the largest single cost of the route."""
    services = await get_services(request)
    record = await get_record(request)
    principal = await authenticate(request, services, record)
    chat_request = parse_chat_request(await request.body())
    if prefers_async(request.headers.getlist("prefer")):
        return await enqueue_job(request, services, record, principal, chat_request)
    chat = services.chat
    if not chat_request.stream:
        completed = await unless_client_leaves(
            request, chat.complete(chat_request, record, principal)
        )
        body = _COMPLETION_JSON.dump_json(completed.completion)  # once, by pydantic-core
        return Response(
            body, media_type="application/json", headers=answer_headers(completed.result)
        )
    run = await unless_client_leaves(request, chat.start(chat_request, record, principal))
    try:
        options = chat_request.stream_options
        include_usage = bool(options and options.include_usage)
        assert run.generation is not None
        events = server_sent_events(
            chat.chunks(run, include_usage=include_usage), run.generation.identity
        )
        return RunStream(events, run, stream_headers(run))
    except BaseException as exc:
        await run.close(exc)
        raise


def stream_headers(run: ChatRun) -> dict[str, str]:
    """The headers of a streamed answer: its worker, and what its hold leaves."""
    headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
    if run.generation is not None:
        headers["x-infermesh-node-id"] = run.generation.identity.node_id
    charge = run.charge
    if charge is not None and charge.available is not None:
        headers["x-infermesh-hold-micro-usd"] = str(charge.held)
        headers["x-infermesh-available-micro-usd"] = str(charge.available)
    return headers


def answer_headers(result: RunResult) -> dict[str, str]:
    """The headers of a whole answer: its worker, its cost and the balance after it."""
    headers = bill_headers(result)
    if result.node_id is not None:
        headers["x-infermesh-node-id"] = result.node_id
    return headers


def bill_headers(result: RunResult) -> dict[str, str]:
    headers = {"x-infermesh-cost-micro-usd": str(result.cost)}
    charge, settled = result.charge, result.settled
    if settled is not None and charge is not None and charge.held:
        headers["x-infermesh-balance-micro-usd"] = str(settled.balance.balance)
        headers["x-infermesh-available-micro-usd"] = str(settled.balance.available)
    return headers
