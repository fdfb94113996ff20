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

from eth_utils.address import to_checksum_address
from fastapi import Request, Response
from fastapi.responses import JSONResponse

from infermesh.accounts.siwe import SiweMessage
from infermesh.errors import InvalidRequest
from infermesh.gateway.dashboard.auth import HOME, safe_next, sign_in_fields, start_session
from infermesh.gateway.dashboard.routing import dashboard_router
from infermesh.gateway.dashboard.web import PREFIX, secured, services_of

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
    entered = await services.wallets.enter(fields.get("message", ""), fields.get("signature", ""))
    account = await services.accounts.get_account(entered.account)
    opened = await services.sessions.open_for_wallet(account.id, entered.address)
    response = secured(JSONResponse({"next": safe_next(fields) or HOME}))
    start_session(response, request, opened)
    return response


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
