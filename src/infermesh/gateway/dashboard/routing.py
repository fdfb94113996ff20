"""The dashboard's router: its routes answer errors as pages, not JSON envelopes.

Every dashboard route runs through :class:`DashboardRoute`: a browser that is not signed
in is sent to the sign-in page (:class:`SignInFirst`), and any infermesh error (a CSRF
failure, a key of another account, a bad value) is rendered as the error page with its
status, in HTML, with the security headers.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute

from infermesh.accounts.records import Principal
from infermesh.errors import Forbidden, InfermeshError
from infermesh.gateway.dashboard.web import (
    PREFIX,
    Page,
    current_session,
    redirect,
    render,
    services_of,
)

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class SignInFirst(Exception):
    """The page needs a signed-in browser."""


class DashboardRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def page_errors(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInFirst:
                target = request.url.path
                if request.url.query:
                    target += "?" + request.url.query
                return redirect(f"{PREFIX}/sign-in?next={quote(target, safe='')}")
            except InfermeshError as exc:
                record = getattr(request.state, "record", None)
                if record is not None:
                    record.error_code = exc.code
                session = await current_session(request)
                return render(
                    request,
                    "error.html",
                    session=session,
                    status_code=exc.status_code,
                    error=exc,
                )

        return page_errors


def dashboard_router() -> APIRouter:
    """A router whose routes answer as pages (see the module docstring)."""
    return APIRouter(prefix=PREFIX, route_class=DashboardRoute, include_in_schema=False)


async def signed_in(request: Request) -> Page:
    """The page's viewer; :class:`SignInFirst` if the browser is not signed in."""
    session = await current_session(request)
    if session is None:
        raise SignInFirst
    return Page(request, services_of(request), session)


async def account_viewer(request: Request) -> tuple[Page, Principal]:
    """The page's viewer and its account (the admin's session has none: 403)."""
    page = await signed_in(request)
    principal = page.session.principal
    if principal is None:
        raise Forbidden(
            "This page is an account's; the admin's session has none. Sign in with an "
            "account's API key or wallet.",
            code="account_page",
        )
    return page, principal


async def admin_viewer(request: Request) -> Page:
    """The page's viewer, who must be the admin (403 otherwise)."""
    page = await signed_in(request)
    if not page.session.admin:
        raise Forbidden("This page is the admin's: sign in with the admin key.", code="admin_page")
    return page
