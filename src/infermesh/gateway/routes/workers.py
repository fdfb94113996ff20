"""``WS /v1/workers/connect``: where workers dial in (the wire protocol is in
:mod:`infermesh.protocol.wire`).

The handshake: a worker token in ``Authorization: Bearer``, then a ``hello`` within
:data:`HELLO_TIMEOUT` seconds. The gateway accepts the models it has in its catalog,
answers ``welcome`` with the worker's node id, and runs the session. Anything wrong
gets a ``refused`` frame with a code and a reason, then the connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from fastapi import APIRouter, WebSocket
from pydantic import ValidationError

from infermesh.accounts.workers import WorkerIdentity
from infermesh.catalog.catalog import Catalog
from infermesh.errors import WorkerLost
from infermesh.gateway.state import Services
from infermesh.gateway.worker_link import (
    POLICY_VIOLATION,
    Disconnected,
    MalformedFrame,
    WebSocketLink,
    describe_invalid,
)
from infermesh.gateway.worker_session import WorkerSession
from infermesh.mesh.registry import WorkerRegistry
from infermesh.mesh.remote import RemoteWorker
from infermesh.mesh.worker import Operator
from infermesh.protocol.wire import PROTOCOL_VERSION, Hello, Refused, RefusedModel, Welcome

logger = logging.getLogger(__name__)

router = APIRouter()

HELLO_TIMEOUT = 10.0
NOT_IN_CATALOG = "not in this gateway's model catalog"


@router.websocket("/v1/workers/connect")
async def connect_worker(websocket: WebSocket) -> None:
    """A worker's connection, from handshake to its end."""
    services: Services = websocket.app.state.services
    await websocket.accept()
    link = WebSocketLink(websocket)
    identity = await _authenticate(websocket, services)
    if identity is None:
        await _refuse(
            link,
            Refused(
                code="unauthorized",
                reason="Invalid or revoked worker token (user API keys cannot connect as workers).",
            ),
        )
        return
    hello = await _receive_hello(link)
    if not isinstance(hello, Hello):
        if hello is not None:
            await _refuse(link, hello, worker=identity.worker_id)
        return
    welcome = _welcome(hello, services, identity)
    if isinstance(welcome, Refused):
        await _refuse(link, welcome, worker=identity.worker_id)
        return
    concurrency = {model.id: model.concurrency for model in hello.models}
    remote = RemoteWorker(
        welcome.node_id,
        {model: concurrency[model] for model in welcome.accepted},
        link,
        worker_id=identity.worker_id,
        name=hello.name or identity.name,
        operator=Operator(identity.worker_id, identity.operator_account_id),
    )
    logger.info(
        "worker %s (version %s) connected as node %s serving %s",
        identity.worker_id,
        hello.worker_version,
        welcome.node_id,
        ", ".join(welcome.accepted),
    )
    session = WorkerSession(
        link,
        remote,
        worker_id=identity.worker_id,
        registry=services.registry,
        tokens=services.workers,
        settings=services.settings,
    )
    await session.run(welcome)


async def _authenticate(websocket: WebSocket, services: Services) -> WorkerIdentity | None:
    scheme, _, token = (websocket.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return await services.workers.authenticate(token.strip())


async def _receive_hello(link: WebSocketLink) -> Hello | Refused | None:
    """The worker's hello, a refusal to send back, or None if the worker left."""
    try:
        text = await asyncio.wait_for(link.receive_text(), HELLO_TIMEOUT)
    except TimeoutError:
        return Refused(code="hello_timeout", reason=f"No hello within {HELLO_TIMEOUT:g}s.")
    except MalformedFrame as exc:
        return Refused(code="protocol_error", reason=f"The first frame must be a hello: {exc}.")
    if isinstance(text, Disconnected):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return Refused(code="protocol_error", reason="The first frame is not JSON.")
    refusal = _version_refusal(data)
    if refusal is not None:
        return refusal
    try:
        return Hello.model_validate(data)
    except ValidationError as exc:
        return Refused(code="protocol_error", reason=f"Invalid hello: {describe_invalid(exc)}.")


def _version_refusal(data: object) -> Refused | None:
    """A clear refusal for a worker that speaks another version of the protocol."""
    if not isinstance(data, dict) or data.get("type") != "hello":
        return Refused(code="protocol_error", reason="The first frame must be a hello.")
    version = data.get("protocol_version")
    if version == PROTOCOL_VERSION:
        return None
    return Refused(
        code="unsupported_protocol",
        reason=f"This gateway speaks worker protocol version {PROTOCOL_VERSION}; the worker "
        f"sent version {str(version)[:20]}. Install the infermesh version that matches "
        "the gateway.",
    )


def _welcome(hello: Hello, services: Services, identity: WorkerIdentity) -> Welcome | Refused:
    accepted, refused = _sort_models(hello, services.catalog)
    if not accepted:
        listed = "; ".join(f"{model.id}: {model.reason}" for model in refused)
        return Refused(code="no_known_models", reason=f"No model this gateway serves ({listed}).")
    return Welcome(
        node_id=_node_id(services.registry, identity.worker_id),
        heartbeat_interval=services.settings.heartbeat_interval,
        accepted=accepted,
        refused=refused,
    )


def _sort_models(hello: Hello, catalog: Catalog) -> tuple[list[str], list[RefusedModel]]:
    accepted: list[str] = []
    refused: list[RefusedModel] = []
    for model in hello.models:
        if model.id in accepted or any(entry.id == model.id for entry in refused):
            continue
        if model.id in catalog:
            accepted.append(model.id)
        else:
            refused.append(RefusedModel(id=model.id, reason=NOT_IN_CATALOG))
    return accepted, refused


def _node_id(registry: WorkerRegistry, worker_id: str) -> str:
    """The worker's id, suffixed while another connection of the same token is live."""
    taken = {worker.node_id for worker in registry.workers()}
    node_id, count = worker_id, 1
    while node_id in taken:
        count += 1
        node_id = f"{worker_id}-{count}"
    return node_id


async def _refuse(link: WebSocketLink, refusal: Refused, *, worker: str | None = None) -> None:
    logger.warning(
        "worker connection refused (%s)%s: %s",
        refusal.code,
        f" for {worker}" if worker else "",
        refusal.reason,
    )
    with contextlib.suppress(WorkerLost):
        await link.send(refusal)
    await link.close(POLICY_VIOLATION, refusal.reason)
