"""A model as the catalog knows it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from infermesh.billing.pricing import Pricing
from infermesh.protocol.models import Capabilities

BackendKind = Literal["transformers", "openai"]

TINY_MODEL_ID = "infermesh-tiny"


class ServeSpec(BaseModel):
    """Where a model is served: which backend and the engine's own name for it."""

    model_config = ConfigDict(extra="forbid")

    backend: BackendKind
    engine_model: str = Field(min_length=1, description="path or hub id, or the upstream's name")
    upstream_url: str | None = None
    upstream_key_env: str | None = Field(
        default=None, description="environment variable that holds the upstream's key"
    )

    @model_validator(mode="after")
    def _upstream_for_openai(self) -> ServeSpec:
        if self.backend == "openai" and not self.upstream_url:
            raise ValueError("the openai backend needs upstream_url")
        return self


class ModelSpec(BaseModel):
    """One catalog entry."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    tier: str = "fast"
    params: str | None = None
    description: str | None = None
    context_length: int = Field(default=4096, ge=16)
    capabilities: Capabilities = Field(default_factory=Capabilities)
    owned_by: str = "infermesh"
    created: int = 0
    pricing: Pricing | None = Field(default=None, description="None: the model is free")
    serve: ServeSpec | None = None
