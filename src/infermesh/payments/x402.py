"""USDC top-ups by x402 (version 1, scheme ``exact``): ``POST /v1/credits/topup`` with an
amount and no payment is answered 402 with the payment requirements; the retry carries
an ``X-PAYMENT`` header, an EIP-3009 ``TransferWithAuthorization`` signed by the
account's wallet, which the relayer settles with ``transferWithAuthorization`` (paying
its gas). The deposit watcher then credits the transfer's log like any other deposit.

Before anything is signed the authorization is checked off chain (version, scheme and
network; its payer is the account's wallet, its recipient the treasury, its value the
amount asked and in bounds, its window open and far enough from closing, its signature
the payer's) and against the token (the nonce unused, the payer holds the value,
``transferWithAuthorization`` would not revert). An authorization is used once: the
payer and nonce are recorded, unique, in the transaction that stores the relayer's
transaction, before it is broadcast; a replay (or a second post racing the first) gets
409 and sends nothing.

x402 names networks: Base is ``base``, Base Sepolia ``base-sepolia``; any other chain is
named by its CAIP-2 id, ``eip155:<chain id>`` (accepted for Base and Base Sepolia too).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError
from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError

from infermesh.billing.ledger import MAX_GRANT
from infermesh.billing.money import format_usd
from infermesh.errors import Conflict, InvalidRequest
from infermesh.payments._relay import BIGINT_MAX, account_wallet, add_relayed_claim
from infermesh.payments.chain import CallReverted, Chain, ChainUnavailable
from infermesh.payments.outbox import Call, Outbox, Signer, StoredTx
from infermesh.payments.permits import MIN_PERMIT_WINDOW
from infermesh.payments.records import DepositOptions
from infermesh.payments.token_domain import TokenDomain
from infermesh.payments.usdc import UINT256_MAX, Authorization, read_uint
from infermesh.protocol.payments import X402PaymentPayload
from infermesh.store import Database, X402Payment, utcnow

logger = logging.getLogger(__name__)

X402_VERSION = 1
SCHEME = "exact"
MAX_PAYMENT_HEADER = 4096
"""Characters of ``X-PAYMENT`` at most (a genuine one is about 800)."""
MAX_TIMEOUT_SECONDS = 300
"""What the requirements tell a client to leave between signing and ``validBefore``."""
MIN_AUTHORIZATION_WINDOW = MIN_PERMIT_WINDOW
"""Seconds ``validBefore`` must still leave for the relayer to get the transfer mined."""
_NETWORK_NAMES = {8453: "base", 84532: "base-sepolia"}


class PaymentRefused(InvalidRequest):
    """The x402 payment cannot be settled (``code``, x402's where it has one, says why)."""

    code = "invalid_payload"


@dataclass(frozen=True, slots=True)
class Payment:
    """An ``X-PAYMENT`` header, decoded: what it claims to be and its authorization."""

    version: int
    scheme: str
    network: str
    authorization: Authorization


@dataclass(frozen=True, slots=True)
class Requirements:
    """What a payment of ``amount`` base units must be: an authorization on ``network``
    of ``asset`` (whose EIP-712 domain has ``name`` and ``version``) to ``pay_to``."""

    network: str
    amount: int
    pay_to: str
    asset: str
    name: str
    version: str
    max_timeout_seconds: int = MAX_TIMEOUT_SECONDS


@dataclass(frozen=True, slots=True)
class Settlement:
    """A payment accepted: the claim the watcher follows and the relayer's transaction."""

    claim_id: int
    transaction: str
    network: str
    payer: str


def network_name(chain_id: int) -> str:
    """x402's name of the chain ``chain_id``: ``base``, ``base-sepolia`` or ``eip155:<id>``."""
    return _NETWORK_NAMES.get(chain_id, f"eip155:{chain_id}")


def parse_payment(header: str) -> Payment:
    """The ``X-PAYMENT`` header (base64 of x402's JSON payment payload) decoded;
    :class:`PaymentRefused` when it is too long, not base64, not JSON or not a payload."""
    if len(header) > MAX_PAYMENT_HEADER:
        raise _malformed(f"The X-PAYMENT header is longer than {MAX_PAYMENT_HEADER} characters.")
    text = header.strip().replace("-", "+").replace("_", "/")  # base64url too
    try:
        data = json.loads(base64.b64decode(text + "=" * (-len(text) % 4), validate=True))
    except ValueError:  # binascii.Error, UnicodeDecodeError, JSONDecodeError
        raise _malformed("The X-PAYMENT header is not base64 of a JSON object.") from None
    try:
        body = X402PaymentPayload.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "its top level"
        raise _malformed(f"The X-PAYMENT payload is invalid at {where}: {first['msg']}.") from None
    signed = body.payload.authorization
    signature = bytes.fromhex(body.payload.signature[2:])
    v = signature[64] + 27 if signature[64] in (0, 1) else signature[64]
    authorization = Authorization(
        sender=signed.sender.lower(),
        to=signed.to.lower(),
        value=_uint(signed.value, "value"),
        valid_after=_uint(signed.validAfter, "validAfter"),
        valid_before=_uint(signed.validBefore, "validBefore"),
        nonce=bytes.fromhex(signed.nonce[2:]),
        v=v,
        r=signature[:32],
        s=signature[32:64],
    )
    return Payment(body.x402Version, body.scheme, body.network, authorization)


class X402Topups:
    """States what an x402 top-up must pay, checks posted payments and settles them
    through the relayer; the deposit watcher does the rest."""

    def __init__(
        self,
        db: Database,
        chain: Chain,
        outbox: Outbox,
        relayer: Signer,
        options: DepositOptions,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = db
        self._chain = chain
        self._outbox = outbox
        self._relayer = relayer
        self._options = options
        self._clock = clock
        self.network = network_name(options.chain_id)
        self.domain = TokenDomain(
            options.usdc_name, options.usdc_version, options.chain_id, options.usdc
        )

    def requirements(self, amount: int) -> Requirements:
        """What a top-up of ``amount`` micro-USD (= USDC base units) must pay."""
        self._check_amount(amount, param="amount")
        options = self._options
        return Requirements(
            network=self.network,
            amount=amount,
            pay_to=options.treasury,
            asset=options.usdc,
            name=options.usdc_name,
            version=options.usdc_version,
        )

    async def settle(self, account_id: int, payment: Payment, amount: int | None) -> Settlement:
        """Check ``payment`` (of ``amount``, when the request names one) and have the
        relayer send its ``transferWithAuthorization`` for ``account_id``."""
        authorization = payment.authorization
        self._check_kind(payment)
        await self._check_payer(account_id, authorization)
        self._check_terms(authorization, amount)
        async with self._db.session(read_only=True) as session:
            if await session.scalar(self._used(authorization)) is not None:
                raise _replayed()
        await self._check_on_chain(authorization)
        gas = await self._gas(authorization)
        call = Call("x402_transfer", self._options.usdc, authorization.call(), gas)
        claim_id, sent = await self._store(account_id, authorization, call)
        await self._outbox.broadcast(sent)
        logger.info("settling an x402 top-up of %s USDC", format_usd(authorization.value))
        return Settlement(claim_id, sent[0].tx_hash, self.network, authorization.sender)

    async def _store(
        self, account_id: int, authorization: Authorization, call: Call
    ) -> tuple[int, list[StoredTx]]:
        """The relayer's transaction, its claim and the payment's row, in one transaction."""
        fees = await self._chain.fees()
        now = self._clock()
        try:
            async with self._db.session() as session, session.begin():
                if await session.scalar(self._used(authorization)) is not None:
                    raise _replayed()
                sent = await self._outbox.store(session, self._relayer, [call], fees)
                claim = await add_relayed_claim(
                    session,
                    chain_id=self._options.chain_id,
                    account_id=account_id,
                    tx_hash=sent[0].tx_hash,
                    now=now,
                )
                session.add(
                    X402Payment(
                        chain_id=self._options.chain_id,
                        payer=authorization.sender,
                        nonce="0x" + authorization.nonce.hex(),
                        account_id=account_id,
                        value=authorization.value,
                        valid_before=min(authorization.valid_before, BIGINT_MAX),
                        claim_id=claim.id,
                        created_at=now,
                    )
                )
        except IntegrityError:  # the same authorization, posted at the same moment
            raise _replayed() from None
        return claim.id, sent

    def _used(self, authorization: Authorization) -> Select[int]:
        return select(X402Payment.id).where(
            X402Payment.chain_id == self._options.chain_id,
            X402Payment.payer == authorization.sender,
            X402Payment.nonce == "0x" + authorization.nonce.hex(),
        )

    def _check_kind(self, payment: Payment) -> None:
        if payment.version != X402_VERSION:
            raise PaymentRefused(
                f"Only x402 version {X402_VERSION} payments are taken here.",
                param="x402Version",
                code="invalid_x402_version",
            )
        if payment.scheme != SCHEME:
            raise PaymentRefused(
                f"Only the {SCHEME!r} scheme is taken here.", param="scheme", code="invalid_scheme"
            )
        if payment.network not in (self.network, f"eip155:{self._options.chain_id}"):
            raise PaymentRefused(
                f"This gateway takes payments on {self.network!r}, not {payment.network!r}.",
                param="network",
                code="invalid_network",
            )

    async def _check_payer(self, account_id: int, authorization: Authorization) -> None:
        wallet = await account_wallet(self._db, account_id)
        if authorization.sender != wallet:
            raise PaymentRefused(
                f"The authorization's payer {authorization.sender} is not this account's "
                f"wallet {wallet}.",
                param="payload.authorization.from",
                code="payment_payer_mismatch",
            )

    def _check_terms(self, authorization: Authorization, amount: int | None) -> None:
        if authorization.to != self._options.treasury:
            raise PaymentRefused(
                f"The authorization must pay the treasury {self._options.treasury}.",
                param="payload.authorization.to",
                code="invalid_exact_evm_payload_recipient_mismatch",
            )
        if amount is not None and authorization.value != amount:
            raise PaymentRefused(
                f"The authorization's value must be the amount asked, {amount} base units "
                f"({format_usd(amount)} USDC).",
                param="payload.authorization.value",
                code="invalid_exact_evm_payload_authorization_value",
            )
        self._check_amount(authorization.value, param="payload.authorization.value")
        now = int(self._clock().timestamp())
        if authorization.valid_after >= now:
            raise PaymentRefused(
                "The authorization is not valid yet (validAfter is not in the past).",
                param="payload.authorization.validAfter",
                code="invalid_exact_evm_payload_authorization_valid_after",
            )
        if authorization.valid_before - now < MIN_AUTHORIZATION_WINDOW:
            raise PaymentRefused(
                f"The authorization's validBefore must be at least {MIN_AUTHORIZATION_WINDOW} "
                "seconds away (it is past, or too close for the relayer to get it mined).",
                param="payload.authorization.validBefore",
                code="invalid_exact_evm_payload_authorization_valid_before",
            )
        if authorization.signer(self.domain) != authorization.sender:
            raise PaymentRefused(
                "The signature is not the payer's TransferWithAuthorization for this token, "
                "chain, recipient, value, window and nonce.",
                param="payload.signature",
                code="invalid_exact_evm_payload_signature",
            )

    def _check_amount(self, amount: int, *, param: str) -> None:
        minimum = self._options.min_deposit
        if not minimum <= amount <= MAX_GRANT:
            raise PaymentRefused(
                f"A top-up must be between {format_usd(minimum)} and {format_usd(MAX_GRANT)} USDC.",
                param=param,
                code="amount_out_of_range",
            )

    async def _check_on_chain(self, authorization: Authorization) -> None:
        found = await self._chain.call(self._options.usdc, authorization.state_call())
        if len(found) != 32:
            raise ChainUnavailable("The token's authorizationState answer cannot be read.")
        if int.from_bytes(found, "big") != 0:
            raise Conflict(
                "This authorization was used (or cancelled) on chain already; sign a new one.",
                param="payload.authorization.nonce",
                code="payment_used",
            )
        balance = await read_uint(
            self._chain, self._options.usdc, "balanceOf(address)", authorization.sender
        )
        if balance < authorization.value:
            raise PaymentRefused(
                f"The payer holds {format_usd(balance)} USDC, less than the authorization's "
                f"{format_usd(authorization.value)}.",
                param="payload.authorization.value",
                code="insufficient_funds",
            )

    async def _gas(self, authorization: Authorization) -> int:
        """The transfer's gas, with room; refused if the token would revert it."""
        try:
            estimate = await self._chain.estimate_gas(
                self._relayer.address, self._options.usdc, authorization.call()
            )
        except CallReverted as exc:
            async with self._db.session(read_only=True) as session:
                if await session.scalar(self._used(authorization)) is not None:
                    raise _replayed() from None  # settled by a post racing this one
            raise PaymentRefused(
                f"The token refuses the authorization: {exc.reason}",
                param="payload",
                code="invalid_transaction_state",
            ) from None
        return estimate * 3 // 2


def _uint(text: str, field: str) -> int:
    value = int(text, 16) if text[:2] in ("0x", "0X") else int(text)
    if value > UINT256_MAX:
        raise _malformed(f"The authorization's {field} is above 2**256 - 1.")
    return value


def _malformed(message: str) -> PaymentRefused:
    return PaymentRefused(message, param="X-PAYMENT", code="invalid_payload")


def _replayed() -> Conflict:
    return Conflict(
        "This x402 payment was posted already; an authorization is settled once. Its "
        "deposit is in GET /v1/credits/deposits.",
        param="X-PAYMENT",
        code="payment_used",
    )
