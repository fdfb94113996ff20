"""``GET /v1/limits`` (a key's own limits and use) and ``/admin/…/limits``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body

from infermesh.errors import InvalidRequest
from infermesh.gateway.deps import AdminDep, PrincipalDep, ServicesDep
from infermesh.gateway.state import Services
from infermesh.limits.admin import state_objects
from infermesh.limits.book import Scope
from infermesh.limits.policy import parse_settings
from infermesh.protocol.limits import LimitSettingsObject, RateLimits

router = APIRouter()
admin_router = APIRouter(prefix="/admin", dependencies=[AdminDep])

LimitChanges = Annotated[
    Any,
    Body(
        description='Limits to set: a whole number, "unlimited", or null to clear one.',
        examples=[{"requests_per_minute": 120, "tokens_per_day": "unlimited"}],
    ),
]


@router.get("/v1/limits")
async def my_limits(principal: PrincipalDep, services: ServicesDep) -> RateLimits:
    """The rate limits the calling key is held to, and how much of each is left."""
    states = await services.limits.status(principal)
    return RateLimits(
        account=principal.account_name,
        tier=principal.tier,
        key_id=principal.key_id,
        account_limits=state_objects(states, "account"),
        key_limits=state_objects(states, "key"),
    )


@admin_router.get("/tiers/{tier}/limits")
async def tier_limits(tier: str, services: ServicesDep) -> LimitSettingsObject:
    """A tier's limits: configured, with what an admin set on top."""
    return (await services.limit_admin().show("tier", tier)).wire()


@admin_router.patch("/tiers/{tier}/limits")
async def set_tier_limits(
    tier: str, services: ServicesDep, changes: LimitChanges = None
) -> LimitSettingsObject:
    """Set a tier's limits (every account of the tier, unless it has its own)."""
    return await _update(services, "tier", tier, changes)


@admin_router.get("/accounts/{name}/limits")
async def account_limits(name: str, services: ServicesDep) -> LimitSettingsObject:
    """An account's limits: its own settings and those in force."""
    return (await services.limit_admin().show("account", name)).wire()


@admin_router.patch("/accounts/{name}/limits")
async def set_account_limits(
    name: str, services: ServicesDep, changes: LimitChanges = None
) -> LimitSettingsObject:
    """Set an account's own limits, which replace its tier's."""
    return await _update(services, "account", name, changes)


@admin_router.get("/keys/{key_id}/limits")
async def key_limits(key_id: str, services: ServicesDep) -> LimitSettingsObject:
    """A key's own limits, and its account's."""
    return (await services.limit_admin().show("key", key_id)).wire()


@admin_router.patch("/keys/{key_id}/limits")
async def set_key_limits(
    key_id: str, services: ServicesDep, changes: LimitChanges = None
) -> LimitSettingsObject:
    """Set a key's own limits, which narrow its account's."""
    return await _update(services, "key", key_id, changes)


async def _update(
    services: Services, scope: Scope, subject: str, changes: Any
) -> LimitSettingsObject:
    if not isinstance(changes, dict):
        raise InvalidRequest(
            "Invalid limits: the body must be a JSON object of limit names and values, "
            'e.g. {"requests_per_minute": 60}.',
            code="invalid_limits",
        )
    try:
        settings = parse_settings(changes)
    except ValueError as exc:
        raise InvalidRequest(f"Invalid limits: {exc}.", code="invalid_limits") from None
    return (await services.limit_admin().update(scope, subject, settings)).wire()
