"""A page's filters and cursor as its query gives them, and the links to its other pages.

Lists are paged by cursor: the link to the next page carries the id (or name) of the
last row shown as ``after``, with the page's filters kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlencode

from fastapi import Request


def given(value: str | None) -> str | None:
    """A query parameter's or form field's value; None when missing or left empty."""
    if value is None:
        return None
    return value.strip() or None


def cursor(request: Request) -> str | None:
    """Where the page starts: after the row its ``after`` parameter names (None: at the
    first row)."""
    return given(request.query_params.get("after"))


def page_link(path: str, params: Mapping[str, str | int | None]) -> str:
    """``path`` with ``params`` (those that are not None) as its query string."""
    query = urlencode({name: value for name, value in params.items() if value is not None})
    return f"{path}?{query}" if query else path
