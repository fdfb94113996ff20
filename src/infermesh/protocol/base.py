"""The base model every wire type builds on."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class WireModel(BaseModel):
    """A wire type. Clients send fields we do not know; they are kept, not refused."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class StrictWireModel(BaseModel):
    """A wire type whose unknown fields are refused (internal protocols)."""

    model_config = ConfigDict(extra="forbid")
