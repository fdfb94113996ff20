"""Which rate limits apply: four of them, set per tier and overridden per account or key.

A tier's limits (built-in defaults, ``INFERMESH_TIER_LIMITS``, or set by an admin)
apply to each account of the tier as a whole, whatever key it uses. An account's own
settings replace its tier's. A key may have limits of its own too, which narrow the
account's: a request must fit both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from infermesh.errors import ConfigError

LimitName = Literal[
    "requests_per_minute", "tokens_per_minute", "tokens_per_day", "concurrent_requests"
]
LIMIT_NAMES: tuple[LimitName, ...] = (
    "requests_per_minute",
    "tokens_per_minute",
    "tokens_per_day",
    "concurrent_requests",
)
RATE_WINDOWS: dict[LimitName, float] = {
    "requests_per_minute": 60.0,
    "tokens_per_minute": 60.0,
    "tokens_per_day": 86400.0,
}
"""The window of each rate (the concurrency limit has none)."""

UNLIMITED = "unlimited"
MAX_LIMIT = 10**12

LimitValue = Annotated[StrictInt, Field(ge=1, le=MAX_LIMIT)] | Literal["unlimited"]
"""A limit as it is written: a positive whole number, or ``"unlimited"``."""

DEFAULT_TIER_LIMITS: dict[str, dict[str, int | str]] = {
    "free": {
        "requests_per_minute": 20,
        "tokens_per_minute": 40_000,
        "tokens_per_day": 100_000,
        "concurrent_requests": 2,
    },
    "standard": {
        "requests_per_minute": 60,
        "tokens_per_minute": 200_000,
        "tokens_per_day": 5_000_000,
        "concurrent_requests": 8,
    },
    "pro": {
        "requests_per_minute": 600,
        "tokens_per_minute": 2_000_000,
        "tokens_per_day": UNLIMITED,
        "concurrent_requests": 32,
    },
}


class LimitSettings(BaseModel):
    """Limits as set for a tier, an account or a key. A field left out (or None) is not
    set here and comes from elsewhere; ``"unlimited"`` lifts the limit."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: LimitValue | None = None
    tokens_per_minute: LimitValue | None = None
    tokens_per_day: LimitValue | None = None
    concurrent_requests: LimitValue | None = None

    def value(self, name: LimitName) -> LimitValue | None:
        value: LimitValue | None = getattr(self, name)
        return value

    def stored(self) -> dict[str, int | str]:
        """The fields that are set, as stored."""
        return {name: value for name in LIMIT_NAMES if (value := self.value(name)) is not None}

    def updated(self, changes: LimitSettings) -> LimitSettings:
        """These settings with ``changes`` applied: each field ``changes`` names
        (``model_fields_set``) is replaced, a None clearing it."""
        merged: dict[str, Any] = self.stored()
        for name in changes.model_fields_set:
            value = changes.value(name)  # type: ignore[arg-type]
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = value
        return LimitSettings.model_validate(merged)


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit in force: its value (None: unlimited) and where it was set."""

    name: LimitName
    value: int | None
    source: str

    @property
    def window(self) -> float | None:
        return RATE_WINDOWS.get(self.name)


@dataclass(frozen=True, slots=True)
class EffectiveLimits:
    """The limits a caller is held to: the account's (every limit, perhaps unlimited)
    and the key's own (only those set on the key)."""

    account: dict[LimitName, Limit]
    key: dict[LimitName, Limit]


def resolve(tier: LimitSettings, account: LimitSettings, key: LimitSettings) -> EffectiveLimits:
    """The limits in force, from a tier's, an account's and a key's settings."""
    account_limits: dict[LimitName, Limit] = {}
    key_limits: dict[LimitName, Limit] = {}
    for name in LIMIT_NAMES:
        own = account.value(name)
        chosen, source = (own, "account") if own is not None else (tier.value(name), "tier")
        account_limits[name] = Limit(name, _as_int(chosen), source)
        key_value = key.value(name)
        if key_value is not None:
            key_limits[name] = Limit(name, _as_int(key_value), "key")
    return EffectiveLimits(account_limits, key_limits)


def _as_int(value: LimitValue | None) -> int | None:
    return None if value is None or value == UNLIMITED else int(value)


class TierLimits:
    """The limits of each tier as configured: built-in defaults, with
    ``INFERMESH_TIER_LIMITS`` on top (field by field). A tier named nowhere is
    unlimited."""

    def __init__(self, configured: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self._tiers = {
            tier: LimitSettings.model_validate(limits)
            for tier, limits in DEFAULT_TIER_LIMITS.items()
        }
        for tier, limits in (configured or {}).items():
            try:
                changes = LimitSettings.model_validate(limits)
            except ValidationError as exc:
                raise ConfigError(
                    f"INFERMESH_TIER_LIMITS: tier '{tier}': {describe_error(exc)}"
                ) from None
            self._tiers[tier] = self._tiers.get(tier, LimitSettings()).updated(changes)

    def get(self, tier: str) -> LimitSettings:
        return self._tiers.get(tier, LimitSettings())

    def tiers(self) -> list[str]:
        return sorted(self._tiers)


def parse_settings(data: Mapping[str, Any]) -> LimitSettings:
    """Settings from user input (an admin body, a CLI flag); raises ValueError with a
    readable message."""
    try:
        return LimitSettings.model_validate(dict(data))
    except ValidationError as exc:
        raise ValueError(describe_error(exc)) from None


def describe_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    if first.get("type") in {"model_type", "model_attributes_type", "dict_type"}:
        return "limits must be an object of limit names and values"
    location = first.get("loc", ())
    field = str(location[0]) if location else "limits"
    if first.get("type") == "extra_forbidden":
        return f"unknown limit '{field}'; the limits are {', '.join(LIMIT_NAMES)}"
    return (
        f"'{field}' must be a whole number from 1 to {MAX_LIMIT} or \"{UNLIMITED}\" "
        f"(got {first.get('input')!r})"
    )
