"""The Workers page: a GPU operator's worker tokens, its live workers and its earnings.

An operator is an account that owns worker tokens. The page lists the account's tokens
(never another operator's) with what the gateway's worker registry knows of each live
connection (node, gateway, models and slots, measured speed and error rate) and what
each worker earned; it creates a token (the raw token is the POST's answer, shown once
with the ``infermesh worker`` command line, never put in a URL) and revokes one. The
earnings are shown by day over the last 30 days (a chart drawn by ``static/charts.js``
from the table's numbers) and in all: earned, and, where payments are configured, paid
and payable (as ``GET /v1/payouts``). Everything goes through the services the API and
the CLI use: :class:`~infermesh.accounts.workers.WorkerTokenService`,
:class:`~infermesh.billing.usage.UsageLog`, the registry and the payouts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi import Request, Response

from infermesh.accounts.records import Principal
from infermesh.accounts.workers import WorkerRecord
from infermesh.billing.money import usd
from infermesh.billing.usage import EarningPoint, WorkerEarnings
from infermesh.gateway.dashboard.format import usd_text
from infermesh.gateway.dashboard.routing import account_viewer, dashboard_router
from infermesh.gateway.dashboard.web import PREFIX, Page, checked_form, redirect, render
from infermesh.gateway.state import Services
from infermesh.mesh.peers import PeerWorker
from infermesh.mesh.worker import Worker
from infermesh.payments.payouts import EarningsRecord
from infermesh.store import utcnow

router = dashboard_router()

WORKERS = f"{PREFIX}/workers"
DAYS = 30
UPSTREAM_EXAMPLE = "http://127.0.0.1:8001/v1"


@dataclass(frozen=True, slots=True)
class Connection:
    """One live connection of a worker, as the registry knows it. ``gateway`` is None
    for this gateway, else the URL of the gateway of the network that holds it."""

    node_id: str
    gateway: str | None
    models: list[tuple[str, int]]
    in_flight: int
    tokens_per_second: float | None
    error_rate: float

    @property
    def slots(self) -> int:
        return sum(slots for _, slots in self.models)


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """One worker token of the operator: its record, live connections and earnings."""

    record: WorkerRecord
    connections: list[Connection]
    requests: int
    earned: str

    @property
    def status(self) -> str:
        """Online while connected here or elsewhere in the network (its record says)."""
        if self.record.revoked:
            return "revoked"
        return "online" if self.connections or self.record.online else "offline"


@dataclass(frozen=True, slots=True)
class Totals:
    """The operator's money: earned in all and lately; paid and payable with payments."""

    earned: str
    recent: str
    requests: int
    payouts: EarningsRecord | None
    paid: str | None = None
    pending: str | None = None
    payable: str | None = None


@dataclass(frozen=True, slots=True)
class DayRow:
    """One day of the earnings table."""

    start: datetime
    requests: int
    billed: str
    earned: str


@router.get("/workers")
async def workers_page(request: Request) -> Response:
    page, principal = await account_viewer(request)
    services = page.services
    await services.billing.flush()  # this gateway's settlements, then the figures
    records = await services.workers.list_for_operator(principal.account_id)
    earnings = await services.billing.usage.earnings(operator=principal.account_name)
    series = await _series(services, principal)
    live = _connections(services, principal.account_id)
    by_worker = {row.worker_id: row for row in earnings}
    return render(
        request,
        "workers.html",
        session=page.session,
        workers=[
            _row(record, live.get(record.id, []), by_worker.get(record.id)) for record in records
        ],
        totals=await _totals(services, principal, earnings, series),
        days=[_day(point) for point in reversed(series)],
        chart=_chart(series),
        span_days=DAYS,
        share=f"{services.settings.operator_share:.0%}",
        notice=request.query_params.get("notice"),
    )


@router.post("/workers")
async def create_worker_token(request: Request) -> Response:
    page, principal = await account_viewer(request)
    fields = await checked_form(request, page.session)
    created = await page.services.workers.create(
        fields.get("name", "").strip(), operator=principal.account_name
    )
    gateway = str(request.base_url).rstrip("/")
    response = render(
        request,
        "worker_token_created.html",
        session=page.session,
        created=created,
        gateway=gateway,
        upstream=UPSTREAM_EXAMPLE,
        model=_example_model(page.services),
    )
    response.headers["cache-control"] = "no-store"
    return response


@router.post("/workers/{worker_id}/revoke")
async def revoke_worker_token(request: Request, worker_id: str) -> Response:
    page, principal = await account_viewer(request)
    await checked_form(request, page.session)
    worker = await _owned_worker(page, principal, worker_id)
    await page.services.workers.revoke(worker.id)
    return redirect(
        WORKERS,
        notice=f"Revoked “{worker.name}” ({worker.prefix}…): it is disconnected within "
        "seconds and its token no longer connects.",
    )


async def _owned_worker(page: Page, principal: Principal, worker_id: str) -> WorkerRecord:
    return await page.services.workers.get_for_operator(principal.account_id, worker_id[:100])


async def _series(services: Services, principal: Principal) -> list[EarningPoint]:
    """The last :data:`DAYS` UTC days, today included."""
    now = utcnow()
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return await services.billing.usage.earnings_series(
        principal.account_id, since=today - timedelta(days=DAYS - 1), bucket="day", until=now
    )


async def _totals(
    services: Services,
    principal: Principal,
    earnings: list[WorkerEarnings],
    series: list[EarningPoint],
) -> Totals:
    recent = usd_text(sum(point.earned for point in series))
    requests = sum(row.requests for row in earnings)
    if services.payments is None:
        earned = usd_text(sum(row.earned for row in earnings))
        return Totals(earned=earned, recent=recent, requests=requests, payouts=None)
    record = await services.payments.payouts.earnings(principal.account_id)
    return Totals(
        earned=usd_text(record.earned),
        recent=recent,
        requests=requests,
        payouts=record,
        paid=usd_text(record.paid),
        pending=usd_text(record.pending),
        payable=usd_text(record.payable),
    )


def _connections(services: Services, account_id: int) -> dict[str, list[Connection]]:
    """The registry's live workers of the operator ``account_id``, by worker id."""
    found: dict[str, list[Connection]] = {}
    for worker in services.registry.workers():
        operator = worker.operator
        if operator is not None and operator.account_id == account_id:
            found.setdefault(operator.worker_id, []).append(_connection(services, worker))
    return found


def _connection(services: Services, worker: Worker) -> Connection:
    registry = services.registry
    models = [
        (spec.id, worker.capacity(spec.id))
        for spec in services.catalog
        if worker.capacity(spec.id) > 0
    ]
    if isinstance(worker, PeerWorker):  # its own gateway measures it
        view = worker.view
        return Connection(
            worker.node_id, view.gateway_url, models, view.in_flight,
            view.tokens_per_second, view.error_rate,
        )  # fmt: skip
    stats = registry.stats(worker.node_id)
    return Connection(
        worker.node_id, None, models, registry.in_flight(worker.node_id),
        stats.tokens_per_second, stats.error_rate,
    )  # fmt: skip


def _row(
    record: WorkerRecord, connections: list[Connection], earnings: WorkerEarnings | None
) -> WorkerRow:
    return WorkerRow(
        record=record,
        connections=connections,
        requests=earnings.requests if earnings else 0,
        earned=usd_text(earnings.earned if earnings else 0),
    )


def _day(point: EarningPoint) -> DayRow:
    return DayRow(point.start, point.requests, usd_text(point.billed), usd_text(point.earned))


def _chart(series: list[EarningPoint]) -> dict[str, Any]:
    """What ``workers.js`` draws: days in seconds, earnings in USD (and as written)."""
    return {
        "time": [int(point.start.timestamp()) for point in series],
        "earned": [usd(point.earned) for point in series],
        "earnedText": [usd_text(point.earned) for point in series],
        "requests": [point.requests for point in series],
    }


def _example_model(services: Services) -> str:
    """A model for the command line: one the catalog has for remote workers if any."""
    remote = [spec.id for spec in services.catalog if spec.serve is None]
    return (remote or [spec.id for spec in services.catalog] or ["MODEL_ID"])[0]
