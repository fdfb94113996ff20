"""The API keys page: the signed-in account's keys, and what its owner can do with them.

List the keys; create one (the raw key is the POST's answer, shown once and never put in
a URL); rename, rotate (the new key shown once the same way) and revoke one; set a key's
own rate limits, which narrow its account's. Every change goes through the account and
limits services, as the API and the CLI do. A key id that is not the account's answers
404, like one that does not exist. Revoking or rotating the key the session signed in
with ends the session (see :mod:`infermesh.accounts.sessions`).
"""

from __future__ import annotations

from fastapi import Request, Response

from infermesh.accounts.records import CreatedKey, KeyRecord, Principal
from infermesh.errors import InvalidRequest
from infermesh.gateway.dashboard.limit_fields import LIMIT_LABELS, limit_settings, typed_limit
from infermesh.gateway.dashboard.owned import account_key
from infermesh.gateway.dashboard.routing import account_viewer, dashboard_router
from infermesh.gateway.dashboard.web import (
    PREFIX,
    SESSION_COOKIE,
    Page,
    checked_form,
    clear_session_cookie,
    redirect,
    render,
)
from infermesh.gateway.state import Services
from infermesh.limits.admin import LimitsView
from infermesh.limits.policy import LIMIT_NAMES, LimitName, LimitSettings

router = dashboard_router()
KEYS = f"{PREFIX}/keys"


@router.get("/keys")
async def keys_page(request: Request) -> Response:
    page, principal = await account_viewer(request)
    keys = await page.services.accounts.list_keys(principal.account_name)
    return render(
        request,
        "keys.html",
        session=page.session,
        keys=keys,
        notice=request.query_params.get("notice"),
    )


@router.post("/keys")
async def create_key(request: Request) -> Response:
    page, principal = await account_viewer(request)
    fields = await checked_form(request, page.session)
    created = await page.services.accounts.create_key(
        principal.account_name, name=_name(fields), create_account=False
    )
    return await _shown_once(page, created)


@router.get("/keys/{key_id}")
async def key_page(request: Request, key_id: str) -> Response:
    page, principal = await account_viewer(request)
    key = await _owned_key(page, principal, key_id)
    limits = await page.services.limit_admin().show("key", key.id)
    return render(
        request,
        "key.html",
        session=page.session,
        key=key,
        limits=_limit_rows(limits),
        signed_in_with_it=key.id == page.session.key_id,
        notice=request.query_params.get("notice"),
    )


@router.post("/keys/{key_id}/rename")
async def rename_key(request: Request, key_id: str) -> Response:
    page, principal = await account_viewer(request)
    fields = await checked_form(request, page.session)
    key = await _owned_key(page, principal, key_id)
    renamed = await page.services.accounts.rename_key(key.id, _name(fields))
    label = f"“{renamed.name}”" if renamed.name else "no name"
    return redirect(f"{KEYS}/{key.id}", notice=f"Renamed: the key now has {label}.")


@router.post("/keys/{key_id}/rotate")
async def rotate_key(request: Request, key_id: str) -> Response:
    page, principal = await account_viewer(request)
    await checked_form(request, page.session)
    key = await _owned_key(page, principal, key_id)
    created = await page.services.accounts.rotate_key(key.id)
    return await _shown_once(page, created, replaces=key)


@router.post("/keys/{key_id}/revoke")
async def revoke_key(request: Request, key_id: str) -> Response:
    page, principal = await account_viewer(request)
    await checked_form(request, page.session)
    key = await _owned_key(page, principal, key_id)
    await page.services.accounts.revoke_key(key.id)
    if key.id == page.session.key_id:
        response = redirect(
            f"{PREFIX}/sign-in",
            notice="You revoked the key you signed in with, so you are signed out. "
            "Sign in with another key of your account.",
        )
        await _end_session(page, response)
        return response
    return redirect(KEYS, notice=f"Revoked {_label(key)}: it no longer works.")


@router.post("/keys/{key_id}/limits")
async def set_key_limits(request: Request, key_id: str) -> Response:
    page, principal = await account_viewer(request)
    fields = await checked_form(request, page.session)
    key = await _owned_key(page, principal, key_id)
    admin = page.services.limit_admin()
    current = await admin.show("key", key.id)
    await admin.update("key", key.id, _limit_changes(fields, current))
    return redirect(f"{KEYS}/{key.id}", notice=f"Saved the limits of {_label(key)}.")


async def _owned_key(page: Page, principal: Principal, key_id: str) -> KeyRecord:
    """The key ``key_id`` if it is the account's (:func:`account_key`)."""
    return await account_key(
        page.services,
        principal.account_id,
        key_id,
        missing="Your account has no API key with this id.",
    )


async def _shown_once(
    page: Page, created: CreatedKey, *, replaces: KeyRecord | None = None
) -> Response:
    """The answer that shows ``created``'s raw key, the only time it is shown; when it
    replaces the key the session signed in with, the session ends with it."""
    request = page.request
    signed_out = replaces is not None and replaces.id == page.session.key_id
    response = render(
        request,
        "key_created.html",
        session=None if signed_out else page.session,
        created=created,
        replaces=replaces,
        signed_out=signed_out,
        api_url=f"{request.base_url}v1",
        model=_example_model(page.services),
    )
    response.headers["cache-control"] = "no-store"
    if signed_out:
        await _end_session(page, response)
    return response


async def _end_session(page: Page, response: Response) -> None:
    await page.services.sessions.end(page.request.cookies.get(SESSION_COOKIE))
    clear_session_cookie(response, page.request)


def _example_model(services: Services) -> str:
    """A chat model for the code snippets: one available now if any."""
    chat = [spec.id for spec in services.catalog if spec.kind == "chat"]
    available = [model for model in chat if services.registry.is_available(model)]
    return (available or chat or ["MODEL_ID"])[0]


def _name(fields: dict[str, str]) -> str | None:
    return fields.get("name", "").strip() or None


def _label(key: KeyRecord) -> str:
    return f"“{key.name}” ({key.prefix}…)" if key.name else f"{key.prefix}…"


def _limit_rows(view: LimitsView) -> list[dict[str, object]]:
    """Per limit: its label, the account's value and where it was set, the key's own."""
    rows: list[dict[str, object]] = []
    for name in LIMIT_NAMES:
        account = (view.account_limits or {}).get(name)
        own = view.set.value(name)
        rows.append(
            {
                "name": name,
                "label": LIMIT_LABELS[name],
                "account": account.value if account else None,
                "source": account.source if account else "tier",
                "own": own if isinstance(own, int) else None,
            }
        )
    return rows


def _limit_changes(fields: dict[str, str], current: LimitsView) -> LimitSettings:
    """The key's own limits as the form sets them; a limit the form leaves out is left
    as it is."""
    changes: dict[str, int | None] = {
        name: _limit_value(name, fields[name], current) for name in LIMIT_NAMES if name in fields
    }
    return limit_settings(changes)


def _limit_value(name: LimitName, typed: str, current: LimitsView) -> int | None:
    """One limit as typed: a whole number up to the account's limit, or blank for none
    (the account's applies). A value already set (by an admin, say) may stay as it is."""
    value = typed_limit(name, typed)
    if not isinstance(value, int):  # blank
        return None
    account = (current.account_limits or {}).get(name)
    ceiling = account.value if account is not None else None
    if ceiling is not None and value > ceiling and value != current.set.value(name):
        raise InvalidRequest(
            f"{LIMIT_LABELS[name]}: a key's own limit can only narrow its account's, "
            f"which is {ceiling:,}.",
            param=name,
            code="invalid_limits",
        )
    return value
