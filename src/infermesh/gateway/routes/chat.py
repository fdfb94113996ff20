"""``POST /v1/chat/completions``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from infermesh.chat.generation import Generation
from infermesh.gateway.deps import PrincipalDep, RecordDep, ServicesDep
from infermesh.gateway.disconnect import unless_client_leaves
from infermesh.gateway.errors import invalid_request_from
from infermesh.protocol.chat import ChatCompletionRequest

router = APIRouter()


class GenerationStream(StreamingResponse):
    """An SSE response that always releases its generation, even if never iterated."""

    def __init__(self, content: Any, generation: Generation, headers: dict[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._generation = generation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._generation.aclose()


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise invalid_request_from(list(exc.errors())) from None


@router.post(
    "/v1/chat/completions",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ChatCompletionRequest.model_json_schema()}},
        }
    },
)
async def create_chat_completion(
    request: Request, principal: PrincipalDep, services: ServicesDep, record: RecordDep
) -> Response:
    """Chat completion, streamed as server-sent events when ``stream`` is true."""
    chat_request = parse_chat_request(await request.body())
    if not chat_request.stream:
        completed = await unless_client_leaves(
            request, services.chat.complete(chat_request, record, principal)
        )
        completion = completed.completion
        headers = {
            "x-infermesh-node-id": completion.metadata.node_id,
            "x-infermesh-cost-micro-usd": str(completion.usage.cost_micro_usd or 0),
        }
        if completed.balance is not None:
            headers["x-infermesh-balance-micro-usd"] = str(completed.balance.balance)
            headers["x-infermesh-available-micro-usd"] = str(completed.balance.available)
        return JSONResponse(completion.model_dump(mode="json"), headers=headers)
    generation = await services.chat.start(chat_request, record, principal)
    options = chat_request.stream_options
    include_usage = bool(options and options.include_usage)
    events = services.chat.stream(generation, include_usage=include_usage)
    headers = {
        "x-infermesh-node-id": generation.identity.node_id,
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
    }
    if generation.meter is not None and generation.meter.charge.available is not None:
        charge = generation.meter.charge
        headers["x-infermesh-hold-micro-usd"] = str(charge.held)
        headers["x-infermesh-available-micro-usd"] = str(charge.available)
    return GenerationStream(events, generation, headers)
