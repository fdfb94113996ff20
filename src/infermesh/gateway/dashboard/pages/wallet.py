"""Signing in to the dashboard with a wallet (EIP-4361), for the sign-in page's script
(``static/wallet.js``): it asks the browser's wallet (EIP-1193) for its address, gets
here a message to sign, has the wallet sign it (``personal_sign``) and posts it back.

Both posts carry the sign-in page's double-submit token. The message names the
gateway's wallet domain and a nonce of :class:`~infermesh.accounts.wallets.WalletSignIn`,
and is checked as ``POST /v1/auth/wallet`` checks it (domain, chain, times, signature,
its nonce used once); it opens a session of the wallet's account (made on the wallet's
first sign-in) and, unlike the API, makes no API key.
"""

from __future__ import annotations

import hmac

from eth_utils.address import to_checksum_address
from fastapi import Request, Response
from fastapi.responses import JSONResponse

from infermesh.accounts.siwe import SiweMessage
from infermesh.accounts.wallets import WalletSignIn
from infermesh.errors import Forbidden, InvalidRequest
from infermesh.gateway.dashboard.auth import HOME
from infermesh.gateway.dashboard.auth import _next as next_page
from infermesh.gateway.dashboard.routing import dashboard_router
from infermesh.gateway.dashboard.web import (
    CSRF_FIELD,
    PREFIX,
    SIGN_IN_COOKIE,
    secured,
    services_of,
    set_session_cookie,
)

router = dashboard_router()
STATEMENT = "Sign in to the infermesh dashboard."
SIGN_IN_PATH = f"{PREFIX}/sign-in/wallet"


@router.post("/sign-in/wallet/message")
async def wallet_message(request: Request) -> Response:
    """A new EIP-4361 message for the wallet ``address`` to sign (JSON ``message``),
    on the wallet's chain ``chain_id`` when the gateway takes it."""
    fields = await sign_in_fields(request)
    wallets = services_of(request).wallets
    options = wallets.options
    issued = await wallets.issue_nonce()
    message = SiweMessage(
        domain=options.domain,
        address=_address(fields.get("address", "")),
        uri=str(request.base_url).rstrip("/") + SIGN_IN_PATH,
        chain_id=_chain_id(fields.get("chain_id", ""), options.chain_ids),
        nonce=issued.nonce,
        issued_at=(issued.expires_at - options.nonce_ttl).replace(microsecond=0),
        statement=STATEMENT,
        expiration_time=issued.expires_at.replace(microsecond=0),
    )
    return secured(JSONResponse({"message": message.to_text()}))


@router.post("/sign-in/wallet")
async def wallet_sign_in(request: Request) -> Response:
    """Check the signed ``message`` and open a session of its wallet's account; JSON
    ``next``: the page to go to."""
    fields = await sign_in_fields(request)
    services = services_of(request)
    name, address = await _wallet_account(
        services.wallets, fields.get("message", ""), fields.get("signature", "")
    )
    account = await services.accounts.get_account(name)
    opened = await services.sessions.open_for_wallet(account.id, address)
    response = secured(JSONResponse({"next": next_page(fields) or HOME}))
    set_session_cookie(response, request, opened.token, int(services.sessions.ttl.total_seconds()))
    response.delete_cookie(SIGN_IN_COOKIE, path=PREFIX)
    return response


async def sign_in_fields(request: Request) -> dict[str, str]:
    """The fields of a post from the sign-in page; :class:`Forbidden` unless it carries
    the token of the browser's sign-in cookie (in the form, or ``x-csrf-token``)."""
    form = await request.form()
    fields = {name: value for name, value in form.items() if isinstance(value, str)}
    expected = request.cookies.get(SIGN_IN_COOKIE)
    given = fields.get(CSRF_FIELD) or request.headers.get("x-csrf-token")
    if not expected or not given or not hmac.compare_digest(expected.encode(), given.encode()):
        raise Forbidden(
            "The sign-in page is out of date or this did not come from the dashboard; "
            "reload the page and try again.",
            code="csrf_failed",
        )
    return fields


async def _wallet_account(wallets: WalletSignIn, message: str, signature: str) -> tuple[str, str]:
    """The name of the account of the wallet that signed ``message`` (made if new), and
    the wallet's address: :meth:`WalletSignIn.sign_in` without the API key it makes."""
    # WalletSignIn has no public step that stops before the key; see the report.
    parsed = await wallets._checked(message, signature)
    name, _created = await wallets._consume_and_bind(parsed.nonce, parsed.address.lower())
    return name, parsed.address


def _address(text: str) -> str:
    """``text`` as a checksummed address; :class:`InvalidRequest` if it is not one."""
    value = text.strip()
    if len(value) != 42 or not value.startswith("0x"):
        raise InvalidRequest("The wallet gave no valid address.", param="address")
    try:
        return to_checksum_address(value)
    except ValueError:
        raise InvalidRequest("The wallet gave no valid address.", param="address") from None


def _chain_id(text: str, allowed: tuple[int, ...]) -> int:
    """The wallet's chain (``eth_chainId``, hex or decimal) if the gateway takes it;
    else the first chain it takes (the signature does not depend on the wallet's)."""
    value = text.strip().lower()
    try:
        chain = int(value, 16) if value.startswith("0x") else int(value)
    except ValueError:
        return allowed[0]
    return chain if chain in allowed else allowed[0]
