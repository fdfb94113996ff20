"""How the dashboard writes money and numbers: amounts in USD and in credits, and the
template filters that write them (``usd``, ``usd_decimal``, ``number``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from infermesh.billing.money import CreditUnit, format_usd
from infermesh.billing.records import BalanceRecord


@dataclass(frozen=True, slots=True)
class Money:
    """An amount as a page writes it: USD and credits."""

    usd: str
    credits: str


def usd_text(micro: int) -> str:
    """``micro`` micro-USD as the page writes it: ``$1,234.50``, ``$0.000125`` (exact,
    at least two decimals)."""
    text = f"{Decimal(micro).scaleb(-6):,.6f}"
    whole, fraction = text.split(".")
    return f"${whole}.{fraction.rstrip('0').ljust(2, '0')}"


def credits_text(micro: int, unit: CreditUnit) -> str:
    """``micro`` micro-USD in credits, to four decimals at most: ``1,234.5``."""
    credits = (Decimal(micro) / unit.micro_per_credit).quantize(Decimal("0.0001"))
    return f"{credits:,f}".rstrip("0").rstrip(".")


def number_text(value: int) -> str:
    """A whole number with thousands separated: ``12,345``."""
    return f"{value:,}"


def money(micro: int, unit: CreditUnit) -> Money:
    return Money(usd=usd_text(micro), credits=credits_text(micro, unit))


def balance_money(balance: BalanceRecord, unit: CreditUnit) -> dict[str, Money]:
    """An account's balance, the part held and the rest, by the ids the pages give them
    (the ``balance_stats`` macro)."""
    return {
        "balance": money(balance.balance, unit),
        "held": money(balance.held, unit),
        "available": money(balance.available, unit),
    }


FILTERS: dict[str, Callable[[int], str]] = {
    "usd": usd_text,
    "usd_decimal": format_usd,
    "number": number_text,
}
"""The templates' filters: ``{{ micro | usd }}``, ``{{ micro | usd_decimal }}`` (a plain
decimal, as the CSV export writes it), ``{{ count | number }}``."""
