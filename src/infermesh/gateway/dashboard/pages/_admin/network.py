"""The admin's Network page: every worker on every gateway, and the gateways.

The workers are the registry's (as ``GET /health`` lists them): the gateway's own
in-process worker, the workers connected to it, and, with shared presence (Redis and
the network's secret), those of the other gateways as their gateway publishes them
(:mod:`infermesh.mesh.presence`). Each is shown with its registered worker (name and
operator) when it has one, and what the router measured of it. Registered workers that
the database marks online but this gateway does not see (on a gateway outside the
shared presence) are listed apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from fastapi import Request, Response

from infermesh.accounts.worker_records import WorkerRecord
from infermesh.catalog.catalog import Catalog
from infermesh.gateway.dashboard.routing import admin_viewer, dashboard_router
from infermesh.gateway.dashboard.web import render
from infermesh.gateway.state import Services
from infermesh.mesh.local import InProcessWorker
from infermesh.mesh.peers import PeerWorker
from infermesh.mesh.remote import RemoteWorker
from infermesh.mesh.setup import gateway_url
from infermesh.mesh.worker import Worker
from infermesh.store import utcnow

router = dashboard_router()
THIS_GATEWAY = "this gateway"


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """One worker of the registry, as the page shows it."""

    node_id: str
    kind: str
    gateway: str
    registered: WorkerRecord | None
    models: list[tuple[str, int]]
    in_flight: int
    reported_load: int | None
    tokens_per_second: float | None
    time_to_first_token: float | None
    error_rate: float
    jobs: int
    failures: int
    draining: bool
    online_since: datetime | None
    last_seen: datetime | None


@dataclass(frozen=True, slots=True)
class GatewayRow:
    """A gateway of the network: where it is and how many of its workers are seen."""

    name: str
    url: str
    workers: int
    load: int


def gateway_of(worker: Worker) -> str:
    """The gateway ``worker`` is connected to: another's id, or :data:`THIS_GATEWAY`."""
    return worker.gateway_id if isinstance(worker, PeerWorker) else THIS_GATEWAY


@router.get("/admin/network")
async def network_page(request: Request) -> Response:
    page = await admin_viewer(request)
    services = page.services
    registered = {record.id: record for record in await services.workers.list()}
    rows = [_row(services, worker, registered) for worker in services.registry.workers()]
    seen = {row.node_id for row in rows}
    settings = services.settings
    return render(
        request,
        "admin_network.html",
        session=page.session,
        workers=sorted(
            rows, key=lambda row: (row.gateway != THIS_GATEWAY, row.gateway, row.node_id)
        ),
        gateways=_gateways(services, rows),
        presence=bool(settings.redis_url) and settings.peer_secret is not None,
        this_gateway=THIS_GATEWAY,
        elsewhere=[
            record
            for record in registered.values()
            if record.online and not record.revoked and record.node_id not in seen
        ],
        notice=request.query_params.get("notice"),
    )


def _row(services: Services, worker: Worker, registered: dict[str, WorkerRecord]) -> WorkerRow:
    registry = services.registry
    stats = registry.stats(worker.node_id)
    record = _record_of(worker, registered)
    speed, error_rate = stats.tokens_per_second, stats.error_rate
    if isinstance(worker, PeerWorker):  # its own gateway measured it; this one may not have
        speed, error_rate = worker.view.tokens_per_second, worker.view.error_rate
    return WorkerRow(
        node_id=worker.node_id,
        kind=_kind(worker),
        gateway=gateway_of(worker),
        registered=record,
        models=_models(worker, services.catalog),
        in_flight=registry.in_flight(worker.node_id),
        reported_load=_reported_load(worker),
        tokens_per_second=speed,
        time_to_first_token=stats.time_to_first_token,
        error_rate=error_rate,
        jobs=stats.jobs,
        failures=stats.failures,
        draining=isinstance(worker, RemoteWorker) and worker.draining,
        online_since=record.last_connected_at if record is not None else None,
        last_seen=_last_seen(worker, record),
    )


def _record_of(worker: Worker, registered: dict[str, WorkerRecord]) -> WorkerRecord | None:
    worker_id = worker.worker_id if isinstance(worker, RemoteWorker) else None
    if worker_id is None and worker.operator is not None:
        worker_id = worker.operator.worker_id
    return registered.get(worker_id) if worker_id is not None else None


def _kind(worker: Worker) -> str:
    if isinstance(worker, InProcessWorker):
        return "in-process"
    if isinstance(worker, PeerWorker):
        return "through its gateway"
    return "connected here"


def _models(worker: Worker, catalog: Catalog) -> list[tuple[str, int]]:
    """The models the worker was accepted for, with its slots for each."""
    if isinstance(worker, RemoteWorker):
        names = worker.models
    elif isinstance(worker, PeerWorker):
        names = list(worker.view.models)
    else:
        names = [spec.id for spec in catalog if worker.serves(spec.id)]
    return [(name, worker.capacity(name)) for name in names]


def _reported_load(worker: Worker) -> int | None:
    """Jobs in flight as the worker (or its gateway, for all gateways) last said."""
    if isinstance(worker, PeerWorker):
        return worker.reported_load
    if isinstance(worker, RemoteWorker):
        return worker.reported_in_flight
    return None


def _last_seen(worker: Worker, record: WorkerRecord | None) -> datetime | None:
    if isinstance(worker, RemoteWorker):
        return utcnow() - timedelta(seconds=worker.silent_for())
    return record.last_seen_at if record is not None else None


def _gateways(services: Services, rows: list[WorkerRow]) -> list[GatewayRow]:
    """This gateway first, then each other gateway seen through presence."""
    here = [row for row in rows if row.gateway == THIS_GATEWAY]
    gateways = [
        GatewayRow(
            THIS_GATEWAY, gateway_url(services.settings), len(here), sum(r.in_flight for r in here)
        )
    ]
    peers: dict[str, list[PeerWorker]] = {}
    for worker in services.registry.workers():
        if isinstance(worker, PeerWorker):
            peers.setdefault(worker.gateway_id, []).append(worker)
    for name, workers in sorted(peers.items()):
        load = sum(worker.reported_load for worker in workers)
        gateways.append(GatewayRow(name, workers[0].view.gateway_url, len(workers), load))
    return gateways
