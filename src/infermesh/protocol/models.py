"""OpenAI ``/v1/models`` objects plus infermesh's catalog fields."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from infermesh.protocol.base import WireModel


class Capabilities(WireModel):
    tools: bool = False
    vision: bool = False


class ModelPricing(WireModel):
    """Prices in USD as decimal strings (``"0.15"``), as OpenRouter shows them.

    ``prompt``/``completion`` are per million tokens; ``request`` is per request.
    """

    request: str
    prompt: str
    completion: str
    minimum: str


class ModelObject(WireModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    tier: str
    params: str | None
    description: str | None
    context_length: int
    capabilities: Capabilities
    pricing: ModelPricing | None = None
    available: bool
    kind: Literal["chat", "embedding"] = Field(
        default="chat", description="chat: a chat model; embedding: an embedding model"
    )
    endpoints: list[str] = Field(default_factory=list, description="the API paths that serve it")
    dimensions: int | None = Field(
        default=None, description="an embedding model's vector length (None for chat models)"
    )


class ModelList(WireModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]
