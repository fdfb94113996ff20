"""The dashboard: web pages served by the gateway itself under ``/dashboard``.

Server-rendered HTML (Jinja2 templates in ``templates/``), one stylesheet and a little
plain JavaScript in ``static/`` (third-party files vendored there at pinned versions,
never from a CDN), under a strict Content-Security-Policy. Pages are thin: they call the
same services as the API routes. See :mod:`.web` for sessions, CSRF and headers.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from infermesh.gateway.dashboard import auth
from infermesh.gateway.dashboard.pages import (
    admin,
    billing,
    jobs,
    keys,
    overview,
    usage,
    wallet,
    workers,
)
from infermesh.gateway.dashboard.web import PREFIX, STATIC


def install_dashboard(app: FastAPI) -> None:
    """Add the dashboard's pages and static files to ``app``."""
    app.include_router(auth.router)
    for page in (overview, keys, usage, billing, jobs, workers, admin, wallet):
        app.include_router(page.router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="dashboard-static")
