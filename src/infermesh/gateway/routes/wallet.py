"""``GET /v1/auth/wallet/nonce`` and ``POST /v1/auth/wallet``: sign in with a wallet
(EIP-4361) and get an API key. Neither needs an API key."""

from __future__ import annotations

import math

from fastapi import APIRouter, Request

from infermesh.gateway.deps import ServicesDep
from infermesh.protocol.wallet import WalletNonceObject, WalletSignInObject, WalletSignInRequest

router = APIRouter()

SIGN_IN_PATH = "/v1/auth/wallet"


@router.get(f"{SIGN_IN_PATH}/nonce")
async def wallet_nonce(request: Request, services: ServicesDep) -> WalletNonceObject:
    """A single-use nonce for a sign-in message, and what the message must name."""
    wallets = services.wallets
    issued = await wallets.issue_nonce()
    return WalletNonceObject(
        nonce=issued.nonce,
        expires_at=math.ceil(issued.expires_at.timestamp()),
        domain=wallets.options.domain,
        chain_ids=list(wallets.options.chain_ids),
        uri=str(request.base_url).rstrip("/") + SIGN_IN_PATH,
    )


@router.post(SIGN_IN_PATH)
async def wallet_sign_in(body: WalletSignInRequest, services: ServicesDep) -> WalletSignInObject:
    """Prove a wallet with a signed EIP-4361 message; get a new key of its account."""
    session = await services.wallets.sign_in(body.message, body.signature)
    return WalletSignInObject(
        account=session.account,
        address=session.address,
        created=session.created,
        key=session.key.key,
        key_id=session.key.record.id,
    )
