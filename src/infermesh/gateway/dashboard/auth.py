"""Signing in to the dashboard (with an API key, or the admin key) and out."""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from fastapi import Request, Response

from infermesh.accounts.sessions import OpenedSession
from infermesh.errors import Forbidden, RateLimited
from infermesh.gateway.dashboard.routing import dashboard_router, signed_in
from infermesh.gateway.dashboard.web import (
    CSRF_FIELD,
    PREFIX,
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    checked_form,
    clear_session_cookie,
    current_session,
    redirect,
    render,
    services_of,
    set_session_cookie,
    set_sign_in_cookie,
    sign_in_token,
)

router = dashboard_router()
HOME = f"{PREFIX}/overview"
ADMIN_HOME = f"{PREFIX}/admin"


@router.get("")
@router.get("/")
async def dashboard_root(request: Request) -> Response:
    session = await current_session(request)
    if session is None:
        return redirect(f"{PREFIX}/sign-in")
    return redirect(ADMIN_HOME if session.admin else HOME)


@router.get("/sign-in")
async def sign_in_page(request: Request) -> Response:
    session = await current_session(request)
    if session is not None:
        return redirect(ADMIN_HOME if session.admin else HOME)
    return _sign_in_form(request, status_code=200)


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    fields = await sign_in_fields(request)
    services = services_of(request)
    key = fields.get("api_key", "").strip()
    principal = await services.accounts.authenticate(key) if key else None
    opened: OpenedSession | None = None
    if principal is not None:
        opened = await services.sessions.open_for_key(principal)
    elif key and _is_admin_key(request, key):
        opened = await services.sessions.open_for_admin()
    if opened is None:
        return _sign_in_form(
            request,
            status_code=401,
            error="That key is unknown or revoked.",
            next_page=safe_next(fields),
        )
    home = ADMIN_HOME if opened.record.admin else HOME
    response = redirect(safe_next(fields) or home)
    start_session(response, request, opened)
    return response


async def sign_in_fields(request: Request) -> dict[str, str]:
    """The fields of a post from the sign-in page (its form, or its script's wallet
    sign-in); :class:`Forbidden` unless it carries the token of the browser's sign-in
    cookie (in the form, or in ``x-csrf-token``)."""
    form = await request.form()
    fields = {name: value for name, value in form.items() if isinstance(value, str)}
    expected = request.cookies.get(SIGN_IN_COOKIE)
    given = fields.get(CSRF_FIELD) or request.headers.get("x-csrf-token")
    if not expected or not given or not hmac.compare_digest(expected.encode(), given.encode()):
        raise Forbidden(
            "The sign-in form is out of date or did not come from the dashboard; reload "
            "the page and try again.",
            code="csrf_failed",
        )
    return fields


def start_session(response: Response, request: Request, opened: OpenedSession) -> None:
    """Give the browser the cookie of the session just ``opened``; drop its sign-in cookie."""
    ttl = services_of(request).sessions.ttl
    set_session_cookie(response, request, opened.token, int(ttl.total_seconds()))
    response.delete_cookie(SIGN_IN_COOKIE, path=PREFIX)


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    page = await signed_in(request)
    await checked_form(request, page.session)
    await page.services.sessions.end(request.cookies.get(SESSION_COOKIE))
    response = redirect(f"{PREFIX}/sign-in", notice="Signed out.")
    clear_session_cookie(response, request)
    return response


def _sign_in_form(
    request: Request, *, status_code: int, error: str | None = None, next_page: str | None = None
) -> Response:
    token = sign_in_token(request)
    response = render(
        request,
        "sign_in.html",
        status_code=status_code,
        sign_in_csrf=token,
        error=error,
        next_page=next_page or safe_next(dict(request.query_params)),
        notice=request.query_params.get("notice"),
    )
    set_sign_in_cookie(response, request, token)
    return response


def safe_next(fields: dict[str, str]) -> str | None:
    """Where to go after signing in: a dashboard page only (never another site)."""
    target = fields.get("next") or ""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith(PREFIX + "/"):
        return None
    if "\\" in target or target.startswith("//"):
        return None
    return target


def _is_admin_key(request: Request, key: str) -> bool:
    """Whether ``key`` is the admin key (wrong guesses count against the address, as on
    the admin API)."""
    services = services_of(request)
    admin_key = services.settings.admin_key
    if not admin_key:
        return False
    address = request.client.host if request.client else "unknown"
    locked_for = services.admin_attempts.locked_for(address)
    if locked_for is not None:
        raise RateLimited(
            "Too many wrong keys came from your address; try again later.",
            code="too_many_admin_attempts",
            retry_after=locked_for,
        )
    if hmac.compare_digest(key.encode(), admin_key.encode()):
        return True
    services.admin_attempts.failed(address)
    return False
