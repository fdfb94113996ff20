"""Amounts of money: integers of micro-USD, parsed from and shown as USD or credits."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation, localcontext
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

MICRO_PER_USD = 1_000_000
MAX_PRICE_USD = Decimal(1_000)
"""No single price in the catalog (per request or per million tokens) may exceed this."""


def parse_usd(value: object, *, maximum: Decimal = MAX_PRICE_USD) -> int:
    """``value`` (USD, as a string or number) in micro-USD; exact or ValueError.

    Accepts at most 6 decimals, no negatives, nothing above ``maximum``.
    """
    if isinstance(value, bool):
        raise ValueError("an amount of USD must be a number or a decimal string")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{value!r} is not an amount of USD") from None
    if not amount.is_finite():
        raise ValueError(f"{value!r} is not an amount of USD")
    if amount < 0:
        raise ValueError("an amount of USD cannot be negative")
    if amount > maximum:
        raise ValueError(f"an amount above {maximum} USD is not allowed here")
    with localcontext(prec=len(amount.as_tuple().digits) + 8):  # exact, never rounded
        micro = amount * MICRO_PER_USD
    if micro != micro.to_integral_value():
        raise ValueError(f"{value!r} has more than 6 decimals (1 micro-USD is the smallest unit)")
    return int(micro)


def format_usd(micro: int) -> str:
    """``micro`` micro-USD as a plain decimal string of USD (``150000`` → ``"0.15"``)."""
    text = f"{Decimal(micro).scaleb(-6):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def usd(micro: int) -> float:
    """``micro`` as a float of USD, for display fields only (never for arithmetic)."""
    return micro / MICRO_PER_USD


class CreditUnit:
    """How many micro-USD one display credit is (default 1 credit = $0.01)."""

    def __init__(self, micro_per_credit: int = 10_000) -> None:
        if micro_per_credit <= 0:
            raise ValueError("a credit must be worth at least 1 micro-USD")
        self.micro_per_credit = micro_per_credit

    def credits(self, micro: int) -> float:
        """``micro`` in credits, for display."""
        return micro / self.micro_per_credit

    def to_micro(self, credits: Decimal) -> int:
        """``credits`` in micro-USD; ValueError unless it is a whole number of micro-USD."""
        micro = credits * self.micro_per_credit
        if micro != micro.to_integral_value():
            raise ValueError(f"{credits} credits is not a whole number of micro-USD")
        return int(micro)


USD = Annotated[
    int,
    BeforeValidator(parse_usd),
    PlainSerializer(format_usd, return_type=str),
]
"""A catalog price: written as USD (``"0.15"``), held as integer micro-USD."""
