"""``/internal/v1/…``: what the other gateways of the network ask of this one, with the
network's shared secret (``INFERMESH_PEER_SECRET``); nothing here is for clients.

``POST /internal/v1/generate`` runs a job on a worker connected here, for a gateway
that holds the client: one slot of this gateway's registry, the chunks streamed back
one JSON object per line, an error line at the end of a failed job. Closing the
request cancels the job.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from typing import Annotated, TypeVar

import orjson
from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse
from pydantic import Field, ValidationError
from starlette.requests import ClientDisconnect

from infermesh.errors import ClientDisconnected, InvalidRequest, NotFound, Unauthorized
from infermesh.gateway.deps import ServicesDep
from infermesh.gateway.state import Services
from infermesh.mesh.peers import GENERATE_PATH, PENALIZE_PATH, PeerWorker, error_line
from infermesh.mesh.registry import Lease
from infermesh.mesh.worker import JobTerms, Worker
from infermesh.protocol.base import StrictWireModel
from infermesh.protocol.embeddings import MAX_EMBEDDING_INPUTS, MAX_VECTOR_CHARS
from infermesh.protocol.generation import AnyJob

logger = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)

MAX_FORWARDED_OUTPUT = 10_000_000
T = TypeVar("T", bound=StrictWireModel)


class ForwardedJob(StrictWireModel):
    """A job another gateway sends to a worker connected here."""

    node_id: str = Field(max_length=128)
    max_output_tokens: int = Field(ge=0, le=MAX_FORWARDED_OUTPUT)
    vector_chars: int = Field(default=0, ge=0, le=MAX_EMBEDDING_INPUTS * MAX_VECTOR_CHARS)
    vectors: int = Field(default=0, ge=0, le=MAX_EMBEDDING_INPUTS)
    job: AnyJob


class Penalty(StrictWireModel):
    node_id: str = Field(max_length=128)
    reason: str = Field(max_length=300)


@router.post(GENERATE_PATH)
async def generate(
    request: Request,
    services: ServicesDep,
    authorization: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Run a forwarded job on a worker of this gateway; its chunks, a line each."""
    _check_peer(services, authorization)
    forwarded = _parse(ForwardedJob, await _body(request))
    worker = _local_worker(services, forwarded.node_id)
    lease = await _slot(services, worker, forwarded)
    return StreamingResponse(_run(worker, lease, forwarded), media_type="application/x-ndjson")


@router.post(PENALIZE_PATH)
async def penalize(
    request: Request,
    services: ServicesDep,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, bool]:
    """Another gateway caught a worker of this one breaking the protocol."""
    _check_peer(services, authorization)
    penalty = _parse(Penalty, await _body(request))
    worker = _local_worker(services, penalty.node_id)
    worker.penalize(f"(seen by another gateway) {penalty.reason}")
    return {"ok": True}


async def _body(request: Request) -> bytes:
    """The request's body; the peer gateway may give up on it first (its client left)."""
    try:
        return await request.body()
    except ClientDisconnect:
        raise ClientDisconnected(
            "The peer gateway went away before its request was read."
        ) from None


def _check_peer(services: Services, authorization: str | None) -> None:
    secret = services.settings.peer_secret
    scheme, _, given = (authorization or "").partition(" ")
    if (
        secret is None
        or scheme.lower() != "bearer"
        or not hmac.compare_digest(given.encode(), secret.get_secret_value().encode())
    ):
        raise Unauthorized("Only the gateways of this network may call this.")


def _parse(model: type[T], body: bytes) -> T:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidRequest(f"A malformed peer request: {exc.error_count()} errors.") from None


def _local_worker(services: Services, node_id: str) -> Worker:
    """A worker connected to this gateway (never one this gateway reaches through a
    peer: a job is forwarded once)."""
    for worker in services.registry.workers():
        if worker.node_id == node_id and not isinstance(worker, PeerWorker):
            return worker
    raise NotFound(f"No worker {node_id} is connected to this gateway.", code="no_such_worker")


async def _slot(services: Services, worker: Worker, forwarded: ForwardedJob) -> Lease:
    """A slot on that worker for the job's model, through this gateway's queue."""
    registry = services.registry
    others = [w.node_id for w in registry.workers() if w.node_id != worker.node_id]
    return await registry.acquire(forwarded.job.model, exclude=others)


async def _run(worker: Worker, lease: Lease, forwarded: ForwardedJob) -> AsyncIterator[bytes]:
    terms = JobTerms(
        forwarded.max_output_tokens,
        on_end=lease.end_slot,
        vector_chars=forwarded.vector_chars,
        vectors=forwarded.vectors,
    )
    chunks = worker.generate(forwarded.job, terms)
    tokens = 0
    try:
        async for chunk in chunks:
            lease.first_token()
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
            yield orjson.dumps(chunk.model_dump(mode="json", exclude_none=True)) + b"\n"
        lease.succeeded(tokens)
    except Exception as exc:
        lease.failed()
        yield error_line(exc)
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
        lease.release()
