"""What every dashboard page shares: templates, the session cookie, CSRF, security headers.

A page is HTML rendered on the gateway from a Jinja2 template (autoescaped), with the
caller's session. Every response carries a strict Content-Security-Policy (scripts and
styles from the gateway's own ``/dashboard/static`` only, no inline script), and is not
cached. Every form that changes something carries the session's CSRF token, checked
before anything is done; the sign-in form, before there is a session, carries the token
of a short-lived cookie of its own (double submit). The session cookie is HttpOnly,
SameSite=Strict, limited to ``/dashboard``, and Secure when the page came over HTTPS.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from infermesh import __version__
from infermesh.accounts.sessions import SessionRecord
from infermesh.errors import Forbidden
from infermesh.gateway.dashboard.format import FILTERS
from infermesh.gateway.state import Services

PREFIX = "/dashboard"
SESSION_COOKIE = "infermesh_session"
SIGN_IN_COOKIE = "infermesh_sign_in"
CSRF_FIELD = "csrf"
TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}

_environment = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_environment.filters.update(FILTERS)


@dataclass(frozen=True, slots=True)
class Page:
    """Who is looking at a page, and what its template needs besides."""

    request: Request
    services: Services
    session: SessionRecord


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def secured(response: Response) -> Response:
    """``response`` with the dashboard's security headers."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def render(
    request: Request,
    template: str,
    *,
    session: SessionRecord | None = None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """``template`` rendered for ``session`` (None: signed out), with security headers."""
    html = _environment.get_template(template).render(
        request=request,
        session=session,
        csrf=session.csrf if session is not None else None,
        csrf_field=CSRF_FIELD,
        prefix=PREFIX,
        path=request.url.path,
        version=__version__,
        **context,
    )
    response = HTMLResponse(html, status_code=status_code)
    secured(response)
    return response


def redirect(path: str, *, notice: str | None = None) -> RedirectResponse:
    """A 303 to ``path`` (a page of the dashboard), with a one-line notice to show."""
    target = path if notice is None else f"{path}?notice={quote(notice)}"
    response = RedirectResponse(target, status_code=303)
    secured(response)
    return response


def is_https(request: Request) -> bool:
    """Whether the browser reached the gateway over HTTPS (directly or through a proxy
    that says so)."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def set_session_cookie(response: Response, request: Request, token: str, max_age: int) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max_age,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path=PREFIX, httponly=True, samesite="strict", secure=is_https(request)
    )


def sign_in_token(request: Request) -> str:
    """The double-submit token of the sign-in form: the browser's, or a new one."""
    token = request.cookies.get(SIGN_IN_COOKIE)
    if token and 20 <= len(token) <= 64:
        return token
    return secrets.token_urlsafe(24)


def set_sign_in_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(
        SIGN_IN_COOKIE,
        token,
        max_age=3600,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )


async def current_session(request: Request) -> SessionRecord | None:
    """The live session of the browser's cookie, if any."""
    return await services_of(request).sessions.find(request.cookies.get(SESSION_COOKIE))


async def checked_form(request: Request, session: SessionRecord) -> dict[str, str]:
    """The fields of a form posted by ``session``'s browser; raises :class:`Forbidden`
    unless it carries the session's CSRF token."""
    form = await request.form()
    fields = {name: value for name, value in form.items() if isinstance(value, str)}
    if not session.csrf_matches(fields.get(CSRF_FIELD) or request.headers.get("x-csrf-token")):
        raise Forbidden(
            "This form is out of date or did not come from the dashboard; reload the page "
            "and try again.",
            code="csrf_failed",
        )
    return fields
