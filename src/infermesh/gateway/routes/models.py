"""``GET /v1/models`` and ``GET /v1/models/{id}``: the catalog with live availability."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel

from infermesh.billing.money import format_usd
from infermesh.billing.pricing import Pricing
from infermesh.catalog.spec import ModelSpec
from infermesh.gateway.deps import ServicesDep
from infermesh.mesh.registry import WorkerRegistry
from infermesh.protocol.models import ModelList, ModelObject, ModelPricing

router = APIRouter()


def json_response(body: BaseModel) -> Response:
    """``body`` as JSON, serialized once (FastAPI would validate a returned model again
    against the declared response model first)."""
    return Response(body.model_dump_json(), media_type="application/json")


def model_object(spec: ModelSpec, registry: WorkerRegistry) -> ModelObject:
    return ModelObject(
        id=spec.id,
        created=spec.created,
        owned_by=spec.owned_by,
        tier=spec.tier,
        params=spec.params,
        description=spec.description,
        context_length=spec.context_length,
        capabilities=spec.capabilities,
        pricing=_pricing(spec.pricing),
        available=registry.is_available(spec.id),
        kind=spec.kind,
        endpoints=list(spec.endpoints),
        dimensions=spec.dimensions,
    )


def _pricing(pricing: Pricing | None) -> ModelPricing | None:
    if pricing is None:
        return None
    return ModelPricing(
        request=format_usd(pricing.per_request),
        prompt=format_usd(pricing.input_per_million),
        completion=format_usd(pricing.output_per_million),
        minimum=format_usd(pricing.minimum),
    )


@router.get("/v1/models", response_model=ModelList)
async def list_models(services: ServicesDep) -> Response:
    """Every model in the catalog; ``available`` is true while a worker can serve it now."""
    models = [model_object(spec, services.registry) for spec in services.catalog]
    return json_response(ModelList(data=models))


@router.get("/v1/models/{model_id:path}", response_model=ModelObject)
async def get_model(model_id: str, services: ServicesDep) -> Response:
    return json_response(model_object(services.catalog.get(model_id), services.registry))
