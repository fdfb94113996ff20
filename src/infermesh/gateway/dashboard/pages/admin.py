"""The admin's pages: Accounts, Models, Network and Errors (one module each, in
:mod:`._admin`), on one router. Only a session signed in with the admin key opens them
(:func:`~infermesh.gateway.dashboard.routing.admin_viewer`; an account's gets 403)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from infermesh.gateway.dashboard.pages._admin import accounts, catalog, errors, network
from infermesh.gateway.dashboard.routing import admin_viewer, dashboard_router
from infermesh.gateway.dashboard.web import redirect

_home = dashboard_router()


@_home.get("/admin")
@_home.get("/admin/")
async def admin_home(request: Request) -> Response:
    """Where the admin lands after signing in: the accounts."""
    await admin_viewer(request)
    return redirect(accounts.ACCOUNTS)


router = APIRouter()
router.include_router(_home)
router.include_router(accounts.router)
router.include_router(catalog.router)
router.include_router(network.router)
router.include_router(errors.router)
