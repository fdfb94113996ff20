"""A model as the catalog knows it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from infermesh.billing.pricing import Pricing
from infermesh.protocol.embeddings import MAX_EMBEDDING_DIMENSIONS
from infermesh.protocol.models import Capabilities

BackendKind = Literal["transformers", "openai"]
ModelKind = Literal["chat", "embedding"]
CHAT_ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/messages")
EMBEDDING_ENDPOINTS = ("/v1/embeddings",)

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
    """One catalog entry: a chat model (``kind = "chat"``, the default) or an embedding
    model (``kind = "embedding"``, whose ``dimensions`` is the length of its vectors)."""

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
    kind: ModelKind = "chat"
    dimensions: int | None = Field(
        default=None,
        ge=1,
        le=MAX_EMBEDDING_DIMENSIONS,
        description="an embedding model's vector length (a request may ask for fewer)",
    )

    @model_validator(mode="after")
    def _dimensions_for_embeddings(self) -> ModelSpec:
        # A gateway's catalog needs an embedding model's dimensions (see Catalog); a
        # worker's own spec of a model it serves does not.
        if self.kind == "chat" and self.dimensions is not None:
            raise ValueError("dimensions is for embedding models only")
        return self

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The API paths that serve this model."""
        return EMBEDDING_ENDPOINTS if self.kind == "embedding" else CHAT_ENDPOINTS
