"""The admin's Models page: the catalog with prices, and who serves each model now.

Each model as ``GET /v1/models`` shows it (:func:`model_object`), with the workers of
the registry that serve it now (this gateway's and, with shared presence, the other
gateways'), on which gateways, their slots, and the requests waiting for one.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request, Response

from infermesh.gateway.dashboard.pages._admin.network import THIS_GATEWAY, gateway_of
from infermesh.gateway.dashboard.routing import admin_viewer, dashboard_router
from infermesh.gateway.dashboard.web import render
from infermesh.gateway.routes.models import model_object
from infermesh.mesh.registry import WorkerRegistry
from infermesh.protocol.models import ModelObject

router = dashboard_router()


@dataclass(frozen=True, slots=True)
class ModelRow:
    """A catalog model and how it is served right now."""

    model: ModelObject
    workers: int
    slots: int
    gateways: list[str]
    waiting: int


@router.get("/admin/models")
async def models_page(request: Request) -> Response:
    page = await admin_viewer(request)
    services = page.services
    registry = services.registry
    rows = [_row(model_object(spec, registry), registry) for spec in services.catalog]
    return render(
        request,
        "admin_models.html",
        session=page.session,
        rows=rows,
        this_gateway=THIS_GATEWAY,
        notice=request.query_params.get("notice"),
    )


def _row(model: ModelObject, registry: WorkerRegistry) -> ModelRow:
    serving = [worker for worker in registry.workers() if worker.serves(model.id)]
    return ModelRow(
        model=model,
        workers=len(serving),
        slots=sum(worker.capacity(model.id) for worker in serving),
        gateways=sorted({gateway_of(worker) for worker in serving}),
        waiting=registry.waiting(model.id),
    )
