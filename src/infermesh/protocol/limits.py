"""Rate-limit API objects: a key's limits and use, and the limits admins set."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import SerializerFunctionWrapHandler, model_serializer

from infermesh.protocol.base import WireModel


class LimitObject(WireModel):
    """One limit: its value (null: unlimited), where it was set and, for a caller's own
    limits, how much of it is left."""

    limit: int | None
    source: str
    window_seconds: float | None = None
    remaining: int | None = None
    reset_seconds: float | None = None
    in_use: int | None = None

    @model_serializer(mode="wrap")
    def _without_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _drop_none(handler(self), keep={"limit"})


class RateLimits(WireModel):
    """``GET /v1/limits``: the limits the calling key is held to, and their use.

    ``account_limits`` apply to all the account's keys together; ``key_limits`` are
    the calling key's own (only those set), which a request must fit as well.
    """

    object: Literal["rate_limits"] = "rate_limits"
    account: str
    tier: str
    key_id: str
    account_limits: dict[str, LimitObject]
    key_limits: dict[str, LimitObject]


class LimitSettingsObject(WireModel):
    """An admin's view of the limits of a tier, an account or a key.

    ``set`` is what is set on the subject itself; ``limits`` are those in force for it
    (for a key: its own), ``account_limits`` for a key those of its account.
    """

    object: Literal["limit_settings"] = "limit_settings"
    scope: Literal["tier", "account", "key"]
    subject: str
    tier: str | None = None
    account: str | None = None
    set: dict[str, int | str]
    limits: dict[str, LimitObject]
    account_limits: dict[str, LimitObject] | None = None

    @model_serializer(mode="wrap")
    def _without_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _drop_none(handler(self), keep=set())


def _drop_none(data: dict[str, Any], *, keep: set[str]) -> dict[str, Any]:
    """``data`` without the fields that do not apply (None), except those in ``keep``."""
    return {name: value for name, value in data.items() if value is not None or name in keep}
