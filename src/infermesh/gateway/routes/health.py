"""``GET /health`` (no auth) and ``GET /metrics`` (Prometheus text)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from infermesh import __version__
from infermesh.gateway.deps import ServicesDep
from infermesh.gateway.state import Services
from infermesh.mesh.registry import WorkerRegistry
from infermesh.mesh.worker import Worker

router = APIRouter()


@router.get("/health")
async def health(services: ServicesDep) -> dict[str, Any]:
    """Liveness, version, and which models can be served right now."""
    registry = services.registry
    models = [
        {
            "id": spec.id,
            "available": registry.is_available(spec.id),
            "workers": sum(1 for worker in registry.workers() if worker.serves(spec.id)),
            "waiting": registry.waiting(spec.id),
        }
        for spec in services.catalog
    ]
    return {
        "status": "ok",
        "version": __version__,
        "models": models,
        "workers": [_worker_health(registry, worker) for worker in registry.workers()],
        "queue": await _queue_health(services),
    }


async def _queue_health(services: Services) -> dict[str, Any]:
    """The async job queue (all gateways'): jobs by status, the wait of the oldest
    queued one, recent throughput, webhook deliveries still to make."""
    stats = await services.jobs.queue.stats()
    return {
        "jobs": stats.counts,
        "oldest_queued_seconds": stats.oldest_queued_age,
        "completed_last_minute": stats.completed_last_minute,
        "webhook_deliveries_pending": stats.deliveries_pending,
        "running_here": services.job_runner.running,
    }


def _worker_health(registry: WorkerRegistry, worker: Worker) -> dict[str, Any]:
    node_id = worker.node_id
    stats = registry.stats(node_id)
    return {
        "node_id": node_id,
        "gateway": getattr(worker, "gateway_id", None),  # None: connected to this gateway
        "in_flight": registry.in_flight(node_id),
        "jobs": stats.jobs,
        "failures": stats.failures,
        "error_rate": round(stats.error_rate, 3),
        "time_to_first_token_s": stats.time_to_first_token,
        "tokens_per_second": stats.tokens_per_second,
    }


@router.get("/metrics")
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
