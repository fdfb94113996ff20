"""Placeholder: being written."""

from __future__ import annotations

from infermesh.gateway.dashboard.routing import dashboard_router

router = dashboard_router()
