"""USDC top-ups by EIP-2612 permit: the account's wallet signs a permit for the relayer,
the relayer sends ``permit`` and then ``transferFrom(owner → treasury)``, and the
deposit watcher credits the transfer's log like any other deposit.

Before anything is signed the permit is checked off chain (its owner is the account's
wallet, its spender the relayer, its amount and deadline in bounds, its signature the
owner's for the chain's current nonce) and against the token (the owner holds the
amount; ``permit`` would not revert). A permit is used once: the owner and permit nonce
are unique, so a replay (or a second post racing the first) gets 409 and sends nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError

from infermesh.billing.ledger import MAX_GRANT
from infermesh.billing.money import format_usd
from infermesh.errors import Conflict, InvalidRequest
from infermesh.payments._relay import BIGINT_MAX, account_wallet, add_relayed_claim
from infermesh.payments.chain import CallReverted, Chain
from infermesh.payments.outbox import Call, Outbox, Signer
from infermesh.payments.records import DepositOptions
from infermesh.payments.token_domain import TokenDomain
from infermesh.payments.usdc import Permit, read_uint, transfer_from_call
from infermesh.protocol.payments import PermitBody
from infermesh.store import Database, PermitTopup, utcnow

logger = logging.getLogger(__name__)

MIN_PERMIT_WINDOW = 120
"""Seconds a permit's deadline must still leave for the relayer to get it mined."""
TRANSFER_GAS = 120_000
"""Gas of the relayer's ``transferFrom`` (USDC's takes about 60,000)."""
PERMIT_LIFETIME = 3600
"""Seconds from now to the deadline of a permit :meth:`PermitTopups.to_sign` asks for."""
_PERMIT_TYPES = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ],
    "Permit": [
        {"name": "owner", "type": "address"},
        {"name": "spender", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint256"},
    ],
}


class PermitRefused(InvalidRequest):
    """The permit cannot be relayed (``code`` and the message say why)."""

    code = "permit_invalid"


@dataclass(frozen=True, slots=True)
class RelayedTopup:
    """A permit accepted: the claim the watcher follows, and the relayer's transactions."""

    claim_id: int
    transfer_tx: str
    permit_tx: str


class PermitTopups:
    """Checks posted permits and relays them; the deposit watcher does the rest."""

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
        self.relayer = relayer
        self._options = options
        self._clock = clock
        self.domain = TokenDomain(
            options.usdc_name, options.usdc_version, options.chain_id, options.usdc
        )

    async def current_nonce(self, owner: str) -> int:
        """The owner's next permit nonce, as the token says now."""
        return await read_uint(self._chain, self._options.usdc, "nonces(address)", owner)

    async def to_sign(self, account_id: int, value: int) -> dict[str, Any]:
        """The EIP-712 typed data (``eth_signTypedData_v4``'s argument) of a permit of
        ``value`` base units from ``account_id``'s wallet to the relayer, for the
        token's current nonce, valid :data:`PERMIT_LIFETIME` seconds. :class:`Forbidden`
        if the account has no wallet; :class:`PermitRefused` for a value out of range."""
        owner = await account_wallet(self._db, account_id)
        self._check_value(value)
        message = {
            "owner": owner,
            "spender": self.relayer.address,
            "value": value,
            "nonce": await self.current_nonce(owner),
            "deadline": int(self._clock().timestamp()) + PERMIT_LIFETIME,
        }
        return permit_typed_data(self.domain, message)

    async def permit_of(self, body: PermitBody) -> Permit:
        """The posted permit, with its signature split and its nonce filled in (the
        token's current one when the body names none)."""
        if body.signature is not None:
            raw = bytes.fromhex(body.signature[2:])
            r, s, v = raw[:32], raw[32:64], raw[64]
        elif body.v is not None and body.r is not None and body.s is not None:
            r, s, v = bytes.fromhex(body.r[2:]), bytes.fromhex(body.s[2:]), body.v
        else:
            raise InvalidRequest(
                "A permit needs its signature: 'signature', or 'v', 'r' and 's'.",
                param="permit.signature",
            )
        if v in (0, 1):  # some wallets give the recovery id rather than 27/28
            v += 27
        nonce = body.nonce
        if nonce is None:
            nonce = await self.current_nonce(body.owner.lower())
        return Permit(
            owner=body.owner.lower(),
            spender=(body.spender or self.relayer.address).lower(),
            value=body.value,
            nonce=nonce,
            deadline=body.deadline,
            v=v,
            r=r,
            s=s,
        )

    async def submit(self, account_id: int, permit: Permit) -> RelayedTopup:
        """Check ``permit`` and relay it for ``account_id``; the claim to follow."""
        await self._check_terms(account_id, permit)
        try:
            await self._check_on_chain(permit)
            gas = await self._permit_gas(permit)
        except PermitRefused:
            # The same permit, relayed for a post that raced this one, has moved the
            # token's nonce and the owner's USDC: say it was used, not that it is bad.
            if await self._was_used(permit):
                raise _replayed() from None
            raise
        fees = await self._chain.fees()
        calls = [
            Call("permit", self._options.usdc, permit.call(), gas),
            Call(
                "transfer_from",
                self._options.usdc,
                transfer_from_call(permit.owner, self._options.treasury, permit.value),
                TRANSFER_GAS,
            ),
        ]
        now = self._clock()
        try:
            async with self._db.session() as session, session.begin():
                if await session.scalar(self._used(permit)) is not None:
                    raise _replayed()
                sent = await self._outbox.store(session, self.relayer, calls, fees)
                claim = await add_relayed_claim(
                    session,
                    chain_id=self._options.chain_id,
                    account_id=account_id,
                    tx_hash=sent[1].tx_hash,
                    now=now,
                )
                session.add(
                    PermitTopup(
                        chain_id=self._options.chain_id,
                        owner=permit.owner,
                        nonce=permit.nonce,
                        account_id=account_id,
                        value=permit.value,
                        deadline=min(permit.deadline, BIGINT_MAX),
                        claim_id=claim.id,
                        created_at=now,
                    )
                )
        except IntegrityError:  # the same permit, posted at the same moment
            raise _replayed() from None
        await self._outbox.broadcast(sent)
        logger.info("relaying a permit top-up of %s USDC", format_usd(permit.value))
        return RelayedTopup(claim.id, sent[1].tx_hash, sent[0].tx_hash)

    async def _was_used(self, permit: Permit) -> bool:
        async with self._db.session(read_only=True) as session:
            return await session.scalar(self._used(permit)) is not None

    def _used(self, permit: Permit) -> Select[int]:
        return select(PermitTopup.id).where(
            PermitTopup.chain_id == self._options.chain_id,
            PermitTopup.owner == permit.owner,
            PermitTopup.nonce == permit.nonce,
        )

    async def _check_terms(self, account_id: int, permit: Permit) -> None:
        wallet = await account_wallet(self._db, account_id)
        if permit.owner != wallet:
            raise PermitRefused(
                f"The permit's owner {permit.owner} is not this account's wallet {wallet}.",
                param="permit.owner",
                code="permit_owner_mismatch",
            )
        if permit.spender != self.relayer.address:
            raise PermitRefused(
                f"The permit's spender must be the relayer {self.relayer.address}.",
                param="permit.spender",
                code="permit_spender_mismatch",
            )
        self._check_value(permit.value)
        left = permit.deadline - int(self._clock().timestamp())
        if left < MIN_PERMIT_WINDOW:
            raise PermitRefused(
                f"The permit's deadline must be at least {MIN_PERMIT_WINDOW} seconds away "
                "(it is past, or too close for the relayer to get it mined); sign a new one.",
                param="permit.deadline",
                code="permit_expired",
            )

    def _check_value(self, value: int) -> None:
        minimum = self._options.min_deposit
        if not minimum <= value <= MAX_GRANT:
            raise PermitRefused(
                f"The permit's value must be between {format_usd(minimum)} and "
                f"{format_usd(MAX_GRANT)} USDC (in base units, 6 decimals).",
                param="permit.value",
                code="permit_amount_out_of_range",
            )

    async def _check_on_chain(self, permit: Permit) -> None:
        token = self._options.usdc
        nonce = await self.current_nonce(permit.owner)
        if permit.nonce != nonce:
            raise PermitRefused(
                f"The permit is for nonce {permit.nonce}, but the owner's next permit nonce "
                f"is {nonce}: it was used already, or is not the next one. Sign a new one.",
                param="permit.nonce",
                code="permit_nonce_used" if permit.nonce < nonce else "permit_nonce_invalid",
            )
        if nonce > BIGINT_MAX:
            raise PermitRefused("The owner's permit nonce is out of range.", param="permit")
        if permit.signer(self.domain) != permit.owner:
            raise PermitRefused(
                "The permit's signature is not the owner's for this token, chain, spender, "
                "value, nonce and deadline.",
                param="permit.signature",
                code="permit_signature_invalid",
            )
        balance = await read_uint(self._chain, token, "balanceOf(address)", permit.owner)
        if balance < permit.value:
            raise PermitRefused(
                f"The owner holds {format_usd(balance)} USDC, less than the permit's "
                f"{format_usd(permit.value)}.",
                param="permit.value",
                code="insufficient_usdc",
            )

    async def _permit_gas(self, permit: Permit) -> int:
        """The permit's gas, with room; refused if the token would revert it."""
        try:
            estimate = await self._chain.estimate_gas(
                self.relayer.address, self._options.usdc, permit.call()
            )
        except CallReverted as exc:
            raise PermitRefused(
                f"The token refuses the permit: {exc.reason}",
                param="permit",
                code="permit_rejected",
            ) from None
        return estimate * 3 // 2


def permit_typed_data(domain: TokenDomain, message: dict[str, Any]) -> dict[str, Any]:
    """A permit (``owner``, ``spender``, ``value``, ``nonce``, ``deadline``) as EIP-712
    typed data under the token's ``domain``: what a wallet is asked to sign."""
    return {
        "types": _PERMIT_TYPES,
        "primaryType": "Permit",
        "domain": {
            "name": domain.name,
            "version": domain.version,
            "chainId": domain.chain_id,
            "verifyingContract": domain.verifying_contract,
        },
        "message": message,
    }


def _replayed() -> Conflict:
    return Conflict(
        "This permit was posted already; a permit is relayed once. Its deposit is in "
        "GET /v1/credits/deposits.",
        param="permit",
        code="permit_used",
    )
