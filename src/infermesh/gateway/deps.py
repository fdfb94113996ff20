"""FastAPI dependencies: the services, the caller's identity, the request record."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from infermesh.accounts.records import Principal
from infermesh.errors import Forbidden, RateLimited, Unauthorized
from infermesh.gateway.middleware import request_record
from infermesh.gateway.state import Services
from infermesh.telemetry import RequestRecord

# Dependencies are ``async def`` even where they do not await: FastAPI runs a plain
# ``def`` dependency in a worker thread, a thread hop per request for a lookup.


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_record(request: Request) -> RequestRecord:
    return request_record(request.state)


def presented_key(request: Request) -> str | None:
    """The API key from ``Authorization: Bearer`` or ``X-API-Key``."""
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    api_key = request.headers.get("x-api-key")
    return api_key.strip() if api_key and api_key.strip() else None


async def authenticate(
    request: Request,
    services: Annotated[Services, Depends(get_services)],
    record: Annotated[RequestRecord, Depends(get_record)],
) -> Principal:
    """The caller, by its API key (answered from the gateway's key cache: no database
    call per request while the key is cached)."""
    raw_key = presented_key(request)
    if raw_key is None:
        raise Unauthorized(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' "
            "or 'X-API-Key: <key>'.",
            code="missing_api_key",
        )
    principal = await services.accounts.authenticate(raw_key)
    if principal is None:
        raise Unauthorized("Incorrect or revoked API key provided.")
    record.key_id = principal.key_id
    return principal


async def require_admin(
    request: Request, services: Annotated[Services, Depends(get_services)]
) -> None:
    """The caller must present the admin key (``INFERMESH_ADMIN_KEY``).

    An address that sent too many wrong keys lately gets 429, even with the right key,
    so the key cannot be guessed at speed. The address is the connection's peer (or
    what uvicorn takes from the proxy headers of the proxies it trusts).
    """
    admin_key = services.settings.admin_key
    if not admin_key:
        raise Forbidden(
            "The admin API is disabled: set INFERMESH_ADMIN_KEY on the gateway to enable it.",
            code="admin_disabled",
        )
    attempts = services.admin_attempts
    address = request.client.host if request.client else "unknown"
    locked_for = attempts.locked_for(address)
    if locked_for is not None:
        raise RateLimited(
            "Too many wrong admin keys came from your address; try again later.",
            code="too_many_admin_attempts",
            retry_after=locked_for,
        )
    presented = presented_key(request)
    if presented is None:
        raise Unauthorized("The admin API needs the admin key.", code="invalid_admin_key")
    if not hmac.compare_digest(presented.encode(), admin_key.encode()):
        attempts.failed(address)
        raise Unauthorized("The admin API needs the admin key.", code="invalid_admin_key")


ServicesDep = Annotated[Services, Depends(get_services)]
AdminDep = Depends(require_admin)
RecordDep = Annotated[RequestRecord, Depends(get_record)]
PrincipalDep = Annotated[Principal, Depends(authenticate)]
