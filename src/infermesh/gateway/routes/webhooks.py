"""``POST /v1/webhooks/secret`` and ``GET /v1/webhooks/secret``: the key the caller's
job events are signed with (Standard Webhooks)."""

from __future__ import annotations

from fastapi import APIRouter

from infermesh.gateway.deps import PrincipalDep, ServicesDep
from infermesh.protocol.jobs import WebhookSecretObject

router = APIRouter()


@router.post("/v1/webhooks/secret", response_model_exclude_none=True)
async def rotate_webhook_secret(
    principal: PrincipalDep, services: ServicesDep
) -> WebhookSecretObject:
    """A new signing secret for the caller's account, shown here only; it replaces the
    old one for every event sent from now on."""
    secret, info = await services.webhook_secrets.rotate(principal.account_id)
    return WebhookSecretObject(exists=True, created=int(info.created_at.timestamp()), secret=secret)


@router.get("/v1/webhooks/secret", response_model_exclude_none=True)
async def webhook_secret(principal: PrincipalDep, services: ServicesDep) -> WebhookSecretObject:
    """Whether the caller's account has a signing secret, and since when (never the
    secret itself)."""
    info = await services.webhook_secrets.info(principal.account_id)
    if info is None:
        return WebhookSecretObject(exists=False)
    return WebhookSecretObject(exists=True, created=int(info.created_at.timestamp()))
