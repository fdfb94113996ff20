"""Admin actions on credits: grants and an account's statement (CLI and /admin API)."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal

from infermesh.accounts.records import AccountRecord, AccountSummary
from infermesh.accounts.service import AccountService
from infermesh.billing.ledger import MAX_GRANT, CreditLedger
from infermesh.billing.money import MICRO_PER_USD, parse_usd
from infermesh.billing.records import BalanceRecord, EntryRecord
from infermesh.errors import InvalidRequest

MAX_REASON_LENGTH = 500
MAX_REFERENCE_LENGTH = 100


def parse_amount(usd: str) -> int:
    """A grant of ``usd`` (``"5"``, ``"0.25"``) in micro-USD; InvalidRequest if it is not one."""
    try:
        micro = parse_usd(usd, maximum=Decimal(MAX_GRANT) / MICRO_PER_USD)
    except ValueError as exc:
        raise InvalidRequest(f"Invalid amount: {exc}.", param="amount") from None
    if micro <= 0:
        raise InvalidRequest("A grant must be more than 0.", param="amount")
    return micro


@dataclass(frozen=True, slots=True)
class Statement:
    """An account, its balance and its newest ledger entries."""

    account: AccountRecord
    balance: BalanceRecord
    entries: list[EntryRecord]


@dataclass(frozen=True, slots=True)
class AccountBalance:
    """An account of the admin's list, with its balance."""

    summary: AccountSummary
    balance: BalanceRecord


class CreditAdmin:
    """Grants credit to accounts and shows their statements."""

    def __init__(
        self,
        accounts: AccountService,
        ledger: CreditLedger,
        *,
        balance: Callable[[int], Awaitable[BalanceRecord]] | None = None,
    ) -> None:
        """``balance`` reads an account's balance (a gateway's, which writes its own
        settlements first); the ledger's by default."""
        self._accounts = accounts
        self._ledger = ledger
        self._balance = balance or ledger.balance

    async def grant(
        self, account: str, amount: int, *, reason: str, reference: str | None = None
    ) -> Statement:
        """Add ``amount`` micro-USD to ``account``; once per ``reference`` if given."""
        reason = reason.strip()
        if not reason or len(reason) > MAX_REASON_LENGTH:
            raise InvalidRequest(
                f"A grant needs a reason of 1 to {MAX_REASON_LENGTH} characters.", param="reason"
            )
        if reference is not None and not 1 <= len(reference) <= MAX_REFERENCE_LENGTH:
            raise InvalidRequest(
                f"A reference must have 1 to {MAX_REFERENCE_LENGTH} characters.", param="reference"
            )
        record = await self._accounts.get_account(account)
        reference = reference or f"grant_{secrets.token_hex(8)}"
        await self._ledger.credit(
            record.id, amount, kind="grant", reference=reference, reason=reason
        )
        return await self.statement(account)

    async def statement(self, account: str, *, entries: int = 20) -> Statement:
        """The account's tier, balance and newest ``entries`` ledger entries."""
        record = await self._accounts.get_account(account)
        balance = await self._balance(record.id)
        return Statement(record, balance, await self._ledger.entries(record.id, limit=entries))

    async def accounts(
        self, *, search: str | None = None, limit: int = 50, after: str | None = None
    ) -> tuple[list[AccountBalance], bool]:
        """Accounts by name with their balances (see
        :meth:`~infermesh.accounts.service.AccountService.list_accounts`); and whether
        more exist."""
        summaries, more = await self._accounts.list_accounts(
            search=search, limit=limit, after=after
        )
        balances = [
            AccountBalance(summary, await self._balance(summary.account.id))
            for summary in summaries
        ]
        return balances, more
