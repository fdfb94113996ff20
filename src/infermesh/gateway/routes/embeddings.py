"""``POST /v1/embeddings``: vectors of texts or token arrays, made by embedding models
on workers, through the same admission, hold, routing, failover and settlement as chat."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from infermesh.chat.vectors import embedding_list
from infermesh.errors import InvalidRequest
from infermesh.gateway.deps import authenticate, get_record, get_services
from infermesh.gateway.disconnect import unless_client_leaves
from infermesh.gateway.errors import invalid_request_from
from infermesh.gateway.routes.chat import answer_headers
from infermesh.protocol.embeddings import MAX_EMBEDDING_INPUTS, EmbeddingRequest

router = APIRouter()
EMBEDDINGS_PATH = "/v1/embeddings"


INPUT_RULE = (
    "'input' must be a non-empty string, a list of at most {most} strings, an array of "
    "token ids (whole numbers from 0 to 2147483647), or a list of at most {most} such arrays."
)


def parse_embedding_request(body: bytes) -> EmbeddingRequest:
    try:
        return EmbeddingRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = list(exc.errors())
        if errors and errors[0].get("loc", ())[:1] == ("input",) and len(errors) > 1:
            # a miss of every form of the union: name the parameter, not the forms
            message = INPUT_RULE.format(most=MAX_EMBEDDING_INPUTS)
            raise InvalidRequest(message, param="input") from None
        raise invalid_request_from(errors) from None


@router.post(
    EMBEDDINGS_PATH,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": EmbeddingRequest.model_json_schema()}},
        }
    },
)
async def create_embeddings(request: Request) -> Response:
    """Embeddings of ``input`` (a string, a list of strings, a token array or a list of
    token arrays), as float lists or base64 (``encoding_format``)."""
    services = await get_services(request)
    record = await get_record(request)
    principal = await authenticate(request, services, record)
    embedding_request = parse_embedding_request(await request.body())
    embedded = await unless_client_leaves(
        request, services.chat.embed(embedding_request, record, principal)
    )
    usage = embedded.usage
    body = embedding_list(
        embedded.vectors,
        embedded.decoded,
        model=embedded.model,
        encoding=embedding_request.encoding_format or "float",
        usage={
            "prompt_tokens": usage.prompt_tokens,
            "total_tokens": usage.prompt_tokens,
            "cost": usage.cost,
            "cost_micro_usd": usage.cost_micro_usd,
        },
    )
    return Response(body, media_type="application/json", headers=answer_headers(embedded.result))
