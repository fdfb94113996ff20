"""``WS /v1/workers/connect``: where workers dial in (the wire protocol is in
:mod:`infermesh.protocol.wire`).

The handshake: a worker token in ``Authorization: Bearer``, then a ``hello`` within
:data:`HELLO_TIMEOUT` seconds, of protocol version 1 or later (the connection speaks the
lower of the worker's version and the gateway's). The gateway accepts the models that
are in its catalog and that the token's scope allows, fits the slots announced into the
token's ``max_slots``, answers ``welcome`` with the worker's node id and the version,
and runs the session. A token already holding ``max_connections`` live connections is
refused. Anything wrong gets a ``refused`` frame with a code and a reason, then the
connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import orjson
from fastapi import APIRouter, WebSocket
from pydantic import ValidationError

from infermesh.accounts.workers import WorkerIdentity, WorkerScope
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
from infermesh.protocol.wire import (
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    Hello,
    Refused,
    RefusedModel,
    ServedModel,
    Welcome,
)

logger = logging.getLogger(__name__)

router = APIRouter()

HELLO_TIMEOUT = 10.0
NOT_IN_CATALOG = "not in this gateway's model catalog"
NOT_ALLOWED = "not among the models this worker token may serve"
NO_SLOT_LEFT = "no job slot left for it within this worker token's max_slots ({max_slots})"
WRONG_KIND = "this gateway serves it for {catalog}; the worker offers it for {offered}"


@dataclass(frozen=True)
class _Admission:
    """A hello accepted: the welcome to send and the job slots granted per model."""

    welcome: Welcome
    slots: dict[str, int]


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
    # No await from here to the registry taking the worker (in session.run): the count
    # of live connections cannot go stale in between.
    admission = _admit(hello, services, identity)
    if isinstance(admission, Refused):
        await _refuse(link, admission, worker=identity.worker_id)
        return
    welcome = admission.welcome
    link.version = welcome.protocol_version or MIN_PROTOCOL_VERSION
    remote = RemoteWorker(
        welcome.node_id,
        admission.slots,
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
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
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
    if type(version) is int and version >= MIN_PROTOCOL_VERSION:
        return None
    return Refused(
        code="unsupported_protocol",
        reason=f"This gateway speaks worker protocol version {PROTOCOL_VERSION} and serves "
        f"workers of version {MIN_PROTOCOL_VERSION} or later; the worker sent version "
        f"{str(version)[:20]}. Install the infermesh version that matches the gateway.",
    )


def _admit(hello: Hello, services: Services, identity: WorkerIdentity) -> _Admission | Refused:
    """Welcome the worker within its token's scope, or refuse it."""
    scope = identity.scope
    live = _live_connections(services.registry, identity.worker_id)
    if live >= scope.max_connections:
        return Refused(
            code="too_many_connections",
            reason=f"This worker token already has {live} live connection(s) and allows "
            f"{scope.max_connections}; close one, or use a token that allows more.",
        )
    offered, refused = _sort_models(hello, services.catalog, scope)
    fit = scope.fit_slots(offered)
    refused += [
        RefusedModel(id=model, reason=NO_SLOT_LEFT.format(max_slots=scope.max_slots))
        for model in fit.dropped
    ]
    if not fit.slots:
        listed = "; ".join(f"{model.id}: {model.reason}" for model in refused)
        return Refused(code="no_known_models", reason=f"No model this gateway accepts ({listed}).")
    _log_clamped(identity.worker_id, offered, fit.slots, scope.max_slots)
    version = min(hello.protocol_version, PROTOCOL_VERSION)
    welcome = Welcome(
        node_id=_node_id(services.registry, identity.worker_id),
        heartbeat_interval=services.settings.heartbeat_interval,
        accepted=list(fit.slots),
        refused=refused,
        protocol_version=version if version > MIN_PROTOCOL_VERSION else None,
    )
    return _Admission(welcome, fit.slots)


def _live_connections(registry: WorkerRegistry, worker_id: str) -> int:
    """Connections of the token ``worker_id`` in the registry (a draining one has left)."""
    return sum(
        1
        for worker in registry.workers()
        if isinstance(worker, RemoteWorker) and worker.worker_id == worker_id
    )


def _sort_models(
    hello: Hello, catalog: Catalog, scope: WorkerScope
) -> tuple[list[tuple[str, int]], list[RefusedModel]]:
    """The models offered that may be served, with their slots, in the order of the
    hello (the first mention of a model counts), and those refused, with why."""
    offered: dict[str, int] = {}
    refused: dict[str, RefusedModel] = {}
    for model in hello.models:
        if model.id in offered or model.id in refused:
            continue
        reason = _refusal_reason(model, catalog, scope)
        if reason is None:
            offered[model.id] = model.concurrency
        else:
            refused[model.id] = RefusedModel(id=model.id, reason=reason)
    return list(offered.items()), list(refused.values())


def _refusal_reason(model: ServedModel, catalog: Catalog, scope: WorkerScope) -> str | None:
    if model.id not in catalog:
        return NOT_IN_CATALOG
    if not scope.allows(model.id):
        return NOT_ALLOWED
    kind = catalog.get(model.id).kind
    offered = model.kind or "chat"  # a worker of version 2 serves chat only
    if kind != offered:
        return WRONG_KIND.format(catalog=kind, offered=offered)
    return None


def _log_clamped(
    worker_id: str, offered: list[tuple[str, int]], slots: dict[str, int], max_slots: int
) -> None:
    clamped = [
        f"{model} {asked} -> {slots[model]}"
        for model, asked in offered
        if model in slots and slots[model] < asked
    ]
    if clamped:
        logger.warning(
            "worker %s announced more job slots than its token's max_slots (%d): %s",
            worker_id,
            max_slots,
            ", ".join(clamped),
        )


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
