"""OpenAI's error envelope."""

from __future__ import annotations

from infermesh.protocol.base import WireModel


class ErrorBody(WireModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(WireModel):
    error: ErrorBody
