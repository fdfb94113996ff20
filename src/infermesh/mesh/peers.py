"""Workers held by other gateways of the network, reached through their gateway.

A :class:`PeerWorker` stands in this gateway's registry for a worker connected to
another gateway (known from the shared presence, :mod:`infermesh.mesh.presence`). Its
jobs go to that gateway's ``POST /internal/v1/generate`` over HTTP, with the network's
shared secret, and its chunks come back as one JSON object per line. Closing the stream
cancels the job there. The gateway that holds the client does everything else as for
its own workers: admission, billing, usage bounds, failover (a peer that cannot be
reached, or whose worker is lost or busy, is a lost worker: the job goes elsewhere).

Why HTTP streaming between gateways: each forwarded job is one request whose lifetime
is the job's (backpressure and cancellation come with the connection), no broker sits
in the path of tokens, and gateways already serve HTTP. Redis carries only presence.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from pydantic import ValidationError

from infermesh.errors import (
    BackendError,
    InfermeshError,
    UpstreamRejected,
    WorkerFailed,
    WorkerLost,
)
from infermesh.mesh.worker import JobTerms, Operator
from infermesh.protocol.generation import GenerationChunk, WorkerJob

logger = logging.getLogger(__name__)

GENERATE_PATH = "/internal/v1/generate"
PENALIZE_PATH = "/internal/v1/penalize"
MAX_LINE_BYTES = 16 * 1024 * 1024
"""The longest line a peer may send (a chunk of a job; the wire protocol's frame cap)."""
CONNECT_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class PeerWorkerView:
    """A worker as its gateway publishes it: where it is, what it serves (model →
    slots), its operator, and what that gateway measured of it."""

    node_id: str
    gateway_id: str
    gateway_url: str
    models: Mapping[str, int]
    in_flight: int
    operator: Operator | None
    tokens_per_second: float | None
    error_rate: float


def error_line(exc: BaseException) -> bytes:
    """The last line of a forwarded job that failed: the kind of failure (which decides
    failover at the other end), its code and the gateway's own message."""
    if isinstance(exc, WorkerLost):
        kind = "lost"
    elif isinstance(exc, BackendError):
        kind = "backend"
    elif isinstance(exc, InfermeshError) and exc.status_code < 500:
        kind = "rejected"
    else:
        kind = "lost"
    code = getattr(exc, "code", None) or "peer_failed"
    message = exc.message if isinstance(exc, InfermeshError) else "The worker failed."
    return orjson.dumps({"error": {"kind": kind, "code": code, "message": message}}) + b"\n"


def _raise_for(error: Any) -> None:
    """Raise what a peer's error line says, as this gateway's error."""
    if not isinstance(error, dict):
        raise WorkerLost("The peer gateway ended the job with a malformed error.")
    kind, code = error.get("kind"), str(error.get("code") or "peer_failed")[:64]
    message = str(error.get("message") or "The worker failed.")[:500]
    if kind == "backend":
        raise WorkerFailed(message, code=code)
    if kind == "rejected":
        raise UpstreamRejected(message, code=code)
    raise WorkerLost(message, code=code)


class PeerClient:
    """The HTTP client this gateway forwards jobs to other gateways with."""

    def __init__(self, secret: str) -> None:
        self._headers = {"authorization": f"Bearer {secret}"}
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(CONNECT_TIMEOUT, read=None, write=30.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )

    async def generate(
        self, view: PeerWorkerView, job: WorkerJob, terms: JobTerms
    ) -> AsyncIterator[GenerationChunk]:
        """The job's chunks from the worker behind ``view``'s gateway."""
        body = orjson.dumps(
            {
                "node_id": view.node_id,
                "max_output_tokens": terms.max_output_tokens,
                "vector_chars": terms.vector_chars,
                "vectors": terms.vectors,
                "job": job.model_dump(mode="json", exclude_none=True),
            }
        )
        url = view.gateway_url.rstrip("/") + GENERATE_PATH
        request = self._http.build_request("POST", url, content=body, headers=self._headers)
        ended = False
        try:
            try:
                response = await self._http.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise WorkerLost(
                    f"The gateway holding worker {view.node_id} cannot be reached "
                    f"({type(exc).__name__})."
                ) from None
            try:
                if response.status_code != 200:
                    raise WorkerLost(
                        f"The gateway holding worker {view.node_id} answered "
                        f"{response.status_code}."
                    )
                async for line in _lines(response):
                    if line.startswith(b'{"error"'):
                        ended = True
                        terms.on_end()
                        _raise_for(orjson.loads(line).get("error"))
                    try:
                        chunk = GenerationChunk.model_validate_json(line)
                    except ValidationError:
                        raise WorkerLost("The peer gateway sent a malformed chunk.") from None
                    if chunk.finish_reason is not None and not ended:
                        ended = True
                        terms.on_end()
                    yield chunk
            except httpx.HTTPError as exc:
                raise WorkerLost(
                    f"The gateway holding worker {view.node_id} was lost mid-job "
                    f"({type(exc).__name__})."
                ) from None
            finally:
                await response.aclose()
        finally:
            if not ended:
                terms.on_end()

    async def penalize(self, view: PeerWorkerView, reason: str) -> None:
        """Tell the worker's gateway that its worker broke the protocol here."""
        url = view.gateway_url.rstrip("/") + PENALIZE_PATH
        body = {"node_id": view.node_id, "reason": reason[:300]}
        try:
            await self._http.post(url, json=body, headers=self._headers, timeout=5.0)
        except httpx.HTTPError as exc:
            logger.warning("telling %s of a penalty failed: %s", view.gateway_id, exc)

    async def close(self) -> None:
        await self._http.aclose()


async def _lines(response: httpx.Response) -> AsyncIterator[bytes]:
    """The response's lines, each at most :data:`MAX_LINE_BYTES`."""
    pending = b""
    async for piece in response.aiter_bytes():
        pending += piece
        while True:
            end = pending.find(b"\n")
            if end < 0:
                break
            line, pending = pending[:end], pending[end + 1 :]
            if line:
                yield line
        if len(pending) > MAX_LINE_BYTES:
            raise WorkerLost("The peer gateway sent a line over the size limit.")
    if pending:
        raise WorkerLost("The peer gateway's stream ended mid-line.")


class PeerWorker:
    """A :class:`~infermesh.mesh.worker.Worker` that another gateway holds."""

    def __init__(self, view: PeerWorkerView, client: PeerClient) -> None:
        self.view = view
        self._client = client
        self._penalties: set[asyncio.Future[None]] = set()

    @property
    def node_id(self) -> str:
        return self.view.node_id

    @property
    def operator(self) -> Operator | None:
        return self.view.operator

    @property
    def gateway_id(self) -> str:
        return self.view.gateway_id

    @property
    def reported_load(self) -> int:
        """Jobs in flight on the worker, as its gateway last published (all gateways')."""
        return self.view.in_flight

    def serves(self, model: str) -> bool:
        return model in self.view.models

    def capacity(self, model: str) -> int:
        return self.view.models.get(model, 0)

    def generate(self, job: WorkerJob, terms: JobTerms) -> AsyncIterator[GenerationChunk]:
        return self._client.generate(self.view, job, terms)

    def penalize(self, reason: str) -> None:
        task = asyncio.ensure_future(self._client.penalize(self.view, reason))
        self._penalties.add(task)
        task.add_done_callback(self._penalties.discard)
