"""Showing and setting the limits of a tier, an account or a key (admin API and CLI)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from infermesh.accounts.service import AccountService
from infermesh.errors import InvalidRequest, NotFound
from infermesh.limits.book import LimitBook, Scope
from infermesh.limits.policy import LIMIT_NAMES, Limit, LimitName, LimitSettings
from infermesh.limits.service import LimitState
from infermesh.protocol.limits import LimitObject, LimitSettingsObject


@dataclass(frozen=True, slots=True)
class LimitsView:
    """What is set on a subject, and the limits in force for it."""

    scope: Scope
    subject: str
    tier: str | None
    account: str | None
    set: LimitSettings
    limits: dict[LimitName, Limit]
    account_limits: dict[LimitName, Limit] | None = None

    def wire(self) -> LimitSettingsObject:
        return LimitSettingsObject(
            scope=self.scope,
            subject=self.subject,
            tier=self.tier,
            account=self.account,
            set=self.set.stored(),
            limits=limit_objects(self.limits),
            account_limits=(
                limit_objects(self.account_limits) if self.account_limits is not None else None
            ),
        )


class LimitAdmin:
    """Finds the subject by name, reads and writes its limits in the :class:`LimitBook`."""

    def __init__(
        self, book: LimitBook, accounts: AccountService, *, known_tiers: Collection[str]
    ) -> None:
        self._book = book
        self._accounts = accounts
        self._known_tiers = set(known_tiers) | set(book.tiers.tiers())

    async def show(self, scope: Scope, subject: str) -> LimitsView:
        if scope == "tier":
            return await self._tier_view(subject)
        if scope == "account":
            return await self._account_view(subject)
        return await self._key_view(subject)

    async def update(self, scope: Scope, subject: str, changes: LimitSettings) -> LimitsView:
        """Apply ``changes`` (the fields named; null clears one) to the subject."""
        stored_as = await self._stored_subject(scope, subject)
        await self._book.update(scope, stored_as, changes)
        return await self.show(scope, subject)

    async def _tier_view(self, tier: str) -> LimitsView:
        self._check_tier(tier)
        stored = await self._book.get("tier", tier)
        settings = self._book.tier_settings(tier, stored)
        limits = {name: Limit(name, _value(settings, name), "tier") for name in LIMIT_NAMES}
        return LimitsView("tier", tier, tier, None, stored, limits)

    async def _account_view(self, name: str) -> LimitsView:
        account = await self._accounts.get_account(name)
        stored = await self._book.get("account", str(account.id))
        effective = await self._book.load(account.tier, account.id, None)
        return LimitsView("account", name, account.tier, name, stored, effective.account)

    async def _key_view(self, key_id: str) -> LimitsView:
        key = await self._accounts.get_key(key_id)
        account = await self._accounts.get_account(key.account)
        stored = await self._book.get("key", key_id)
        effective = await self._book.load(account.tier, account.id, key_id)
        return LimitsView(
            "key", key_id, account.tier, key.account, stored, effective.key, effective.account
        )

    async def _stored_subject(self, scope: Scope, subject: str) -> str:
        """What the subject is stored as (an account by its id); NotFound if it is none."""
        if scope == "tier":
            self._check_tier(subject)
            return subject
        if scope == "account":
            return str((await self._accounts.get_account(subject)).id)
        return (await self._accounts.get_key(subject)).id

    def _check_tier(self, tier: str) -> None:
        if tier not in self._known_tiers:
            raise NotFound(
                f"Unknown tier '{tier}'; the tiers are {', '.join(sorted(self._known_tiers))}.",
                param="tier",
            )


def _value(settings: LimitSettings, name: LimitName) -> int | None:
    value = settings.value(name)
    return value if isinstance(value, int) else None


def limit_objects(limits: dict[LimitName, Limit]) -> dict[str, LimitObject]:
    return {
        name: LimitObject(limit=limit.value, source=limit.source, window_seconds=limit.window)
        for name, limit in limits.items()
    }


def state_objects(states: list[LimitState], scope: str) -> dict[str, LimitObject]:
    """The limits of one scope with their use, for ``GET /v1/limits``."""
    objects: dict[str, LimitObject] = {}
    for state in states:
        if state.scope != scope:
            continue
        limit = state.limit
        entry = LimitObject(limit=limit.value, source=limit.source, window_seconds=limit.window)
        if state.level is not None:
            entry.remaining = state.level.remaining
            entry.reset_seconds = round(state.level.reset, 3)
        if state.occupancy is not None:
            entry.in_use = state.occupancy.in_use
            entry.remaining = state.occupancy.remaining
        objects[limit.name] = entry
    return dict(sorted(objects.items(), key=lambda item: LIMIT_NAMES.index(item[0])))


def parse_scope(tier: str | None, account: str | None, key: str | None) -> tuple[Scope, str]:
    """Exactly one of a tier, an account or a key (CLI options)."""
    given = [
        (scope, value)
        for scope, value in (("tier", tier), ("account", account), ("key", key))
        if value is not None
    ]
    if len(given) != 1:
        raise InvalidRequest("Name exactly one of --tier, --account or --key.")
    scope, value = given[0]
    return scope, value  # type: ignore[return-value]
