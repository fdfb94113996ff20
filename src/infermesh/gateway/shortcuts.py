"""Routes served as bare ASGI apps, past FastAPI's router, request wrapper and exception
middleware (a fifth of the gateway's time per request on a fast engine); the request
middleware calls them directly (see ``RequestContextMiddleware``'s ``shortcuts``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from infermesh.errors import InfermeshError
from infermesh.gateway.deps import get_record
from infermesh.gateway.errors import invalid_request_from, render

Endpoint = Callable[[Request], Awaitable[Response]]


def bare_endpoint(endpoint: Endpoint) -> ASGIApp:
    """``endpoint`` as an ASGI app whose errors are rendered as the app's own handlers
    render them (its FastAPI route stays, for the OpenAPI schema)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await endpoint(request)
        except InfermeshError as exc:
            (await get_record(request)).error_code = exc.code
            response = render(exc)
        except ValidationError as exc:
            response = render(invalid_request_from(list(exc.errors())))
        await response(scope, receive, send)

    return app
