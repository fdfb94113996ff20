"""OpenAI ``/v1/models`` objects plus infermesh's catalog fields."""

from __future__ import annotations

from typing import Literal

from infermesh.protocol.base import WireModel


class Capabilities(WireModel):
    tools: bool = False
    vision: bool = False


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
    available: bool


class ModelList(WireModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]
