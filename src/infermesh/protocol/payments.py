"""USDC top-up objects: ``POST /v1/credits/topup`` (by transaction hash, permit or x402
payment) and ``GET /v1/credits/deposits``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from infermesh.protocol.base import WireModel
from infermesh.protocol.credits import Amount


class DepositObject(WireModel):
    """One deposit: a USDC transfer found in a posted transaction (``log_index`` is None
    while none is found, or when the transaction failed as a whole)."""

    object: Literal["deposit"] = "deposit"
    id: str
    tx_hash: str
    log_index: int | None
    amount: Amount
    status: str = Field(
        description="received, submitted (sent by the relayer), mined, credited, failed "
        "or expired (not seen on chain in time)"
    )
    confirmations: int
    required_confirmations: int
    error: str | None
    created: int
    credited: int | None


class DepositList(WireModel):
    """Deposits, newest transaction first; ``has_more`` when older ones follow (pass
    ``last_id`` as ``after`` for the next page)."""

    object: Literal["list"] = "list"
    data: list[DepositObject]
    has_more: bool = False
    last_id: str | None = None


_ADDRESS = r"^0x[0-9a-fA-F]{40}$"
_WORD = r"^0x[0-9a-fA-F]{64}$"
UINT256_MAX = 2**256 - 1
Uint256 = Annotated[int, Field(ge=0, le=UINT256_MAX)]


class PermitBody(WireModel):
    """An EIP-2612 permit of the caller's wallet for the relayer (``GET
    /v1/credits/topup`` names it and the token's EIP-712 domain). ``value`` is in
    USDC base units (6 decimals); integers may be given as strings of digits. The
    signature is ``v``, ``r`` and ``s``, or one 65-byte ``signature``
    (``eth_signTypedData_v4``'s answer). ``nonce`` is the owner's permit nonce signed;
    omitted, the token's current one is assumed."""

    owner: str = Field(pattern=_ADDRESS)
    spender: str | None = Field(default=None, pattern=_ADDRESS)
    value: Uint256
    deadline: Uint256
    nonce: Uint256 | None = None
    v: int | None = Field(default=None, ge=0, le=255)
    r: str | None = Field(default=None, pattern=_WORD)
    s: str | None = Field(default=None, pattern=_WORD)
    signature: str | None = Field(default=None, pattern=r"^0x[0-9a-fA-F]{130}$")


class TopupRequest(WireModel):
    """A USDC top-up: the hash of a transfer to the treasury sent from the caller's
    wallet, or a permit for the relayer to make that transfer (exactly one). With x402
    on, neither: the ``amount`` to top up (USD, e.g. ``"5.25"``, or ``amount_micro_usd``)
    is answered with 402 and x402's payment requirements, and is paid by posting the same
    request again with an ``X-PAYMENT`` header."""

    tx_hash: str | None = Field(default=None, max_length=100, description="0x and 64 hex digits")
    permit: PermitBody | None = None
    amount: Annotated[str, Field(max_length=40)] | int | None = Field(
        default=None, description="USD to top up by x402, as a decimal string (at most 6 decimals)"
    )
    amount_micro_usd: int | None = Field(default=None, ge=0, le=UINT256_MAX)


class TokenObject(WireModel):
    """The USDC contract and its EIP-712 domain (what a permit is signed under)."""

    address: str
    chain_id: int
    name: str
    version: str
    decimals: int = 6


class TopupOptions(WireModel):
    """How to top up on this gateway: send USDC to ``treasury`` and post the hash, or
    sign a permit for ``relayer`` (None: permit top-ups are off) with a deadline at
    least ``min_permit_window`` seconds away."""

    object: Literal["topup_options"] = "topup_options"
    token: TokenObject
    treasury: str
    relayer: str | None
    min_deposit: Amount
    confirmations: int
    min_permit_window: int
    x402: bool = Field(
        default=False, description="whether POST /v1/credits/topup takes x402 payments"
    )


class X402Requirements(WireModel):
    """x402 (version 1) ``PaymentRequirements`` of the ``exact`` scheme: an EIP-3009
    ``TransferWithAuthorization`` of ``maxAmountRequired`` base units of ``asset`` to
    ``payTo``, signed under the token's EIP-712 domain (``extra``: name and version)."""

    scheme: Literal["exact"] = "exact"
    network: str
    maxAmountRequired: str
    resource: str
    description: str
    mimeType: str = "application/json"
    outputSchema: dict[str, object] | None = None
    payTo: str
    maxTimeoutSeconds: int
    asset: str
    extra: dict[str, str]


class X402PaymentRequired(WireModel):
    """The body of x402's 402 answer: why, and the payments accepted."""

    x402Version: int = 1
    error: str
    accepts: list[X402Requirements]


_UINT = r"^(0[xX][0-9a-fA-F]{1,64}|[0-9]{1,78})$"


class X402AuthorizationBody(WireModel):
    """An EIP-3009 authorization as x402 carries it: integers as decimal (or ``0x`` hex)
    strings, the nonce as 32 bytes of ``0x`` hex."""

    sender: str = Field(alias="from", pattern=_ADDRESS)
    to: str = Field(pattern=_ADDRESS)
    value: str = Field(pattern=_UINT)
    validAfter: str = Field(pattern=_UINT)
    validBefore: str = Field(pattern=_UINT)
    nonce: str = Field(pattern=r"^0[xX][0-9a-fA-F]{64}$")


class X402ExactPayload(WireModel):
    """The ``exact`` scheme's payload: the authorization and its 65-byte signature."""

    signature: str = Field(pattern=r"^0[xX][0-9a-fA-F]{130}$")
    authorization: X402AuthorizationBody


class X402PaymentPayload(WireModel):
    """What the ``X-PAYMENT`` header carries (as base64 of this JSON)."""

    x402Version: int
    scheme: str = Field(max_length=64)
    network: str = Field(max_length=64)
    payload: X402ExactPayload


class X402SettlementResponse(WireModel):
    """What the ``X-PAYMENT-RESPONSE`` header carries (as base64 of this JSON):
    ``success`` means the relayer's transaction is submitted; the deposit is credited
    after its confirmations (``GET /v1/credits/deposits``)."""

    success: bool
    transaction: str
    network: str
    payer: str


class PayoutWalletRequest(WireModel):
    """An EIP-4361 message signed by the wallet to be paid to (its nonce from
    ``GET /v1/auth/wallet/nonce``), as at sign-in."""

    message: str = Field(max_length=4096)
    signature: str = Field(max_length=200)


class PayoutObject(WireModel):
    """One payout: USDC sent from the treasury to an operator's wallet. ``status``:
    sent (until its transfer is final), paid, or failed (the amount was credited back)."""

    object: Literal["payout"] = "payout"
    id: str
    account: str
    address: str
    amount: Amount
    status: str
    tx_hash: str
    error: str | None
    created: int
    paid: int | None


class EarningsObject(WireModel):
    """An operator's earnings: in all, paid out, in payouts under way, still owed (of
    which ``payable`` now, up to its available balance), the payout minimum, the wallet
    paid to, and its newest payouts."""

    object: Literal["operator_earnings"] = "operator_earnings"
    account: str
    payout_wallet: str | None
    earned: Amount
    paid: Amount
    pending: Amount
    unpaid: Amount
    payable: Amount
    minimum: Amount
    payouts: list[PayoutObject]


class PayoutRunObject(WireModel):
    """What a payout run did: the payouts it sent and the operators it passed over."""

    object: Literal["payout_run"] = "payout_run"
    sent: list[PayoutObject]
    skipped: list[dict[str, str]]
