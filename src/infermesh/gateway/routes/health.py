"""``GET /health`` (no auth) and ``GET /metrics`` (Prometheus text)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from infermesh import __version__
from infermesh.gateway.deps import ServicesDep

router = APIRouter()


@router.get("/health")
async def health(services: ServicesDep) -> dict[str, Any]:
    """Liveness, version, and which models can be served right now."""
    registry = services.registry
    models = [
        {"id": spec.id, "available": registry.is_available(spec.id)} for spec in services.catalog
    ]
    return {
        "status": "ok",
        "version": __version__,
        "models": models,
        "workers": [
            {"node_id": worker.node_id, "in_flight": registry.in_flight(worker.node_id)}
            for worker in registry.workers()
        ],
    }


@router.get("/metrics")
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
