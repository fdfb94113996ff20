"""``infermesh limits``: show and set the rate limits of tiers, accounts and keys."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from infermesh.accounts import AccountService
from infermesh.billing.tiers import TierPolicy
from infermesh.cli.db import fail, run_with_database
from infermesh.cli.options import DatabaseUrl, DataDir, JsonOutput, make_settings
from infermesh.config import Settings
from infermesh.errors import ConfigError, InvalidRequest
from infermesh.limits.admin import LimitAdmin, LimitsView, parse_scope
from infermesh.limits.book import LimitBook, Scope
from infermesh.limits.policy import (
    LIMIT_NAMES,
    UNLIMITED,
    LimitName,
    LimitSettings,
    TierLimits,
    parse_settings,
)
from infermesh.store import Database

limits_app = typer.Typer(
    help="Rate limits (requests and tokens per minute, tokens per day, concurrent requests) "
    "of tiers, accounts and keys.",
    no_args_is_help=True,
)

TierOption = Annotated[
    str | None,
    typer.Option("--tier", help="A tier, e.g. free, standard or pro.", show_default=False),
]
AccountOption = Annotated[
    str | None, typer.Option("--account", help="Name of an account.", show_default=False)
]
KeyOption = Annotated[
    str | None, typer.Option("--key", help="Id of an API key (key_…).", show_default=False)
]
_VALUE_HELP = 'a whole number, "unlimited", or "default" to inherit it again.'
RequestsPerMinute = Annotated[
    str | None,
    typer.Option(
        "--rpm", "--requests-per-minute", help=f"Requests per minute: {_VALUE_HELP}", metavar="V"
    ),
]
TokensPerMinute = Annotated[
    str | None,
    typer.Option(
        "--tpm", "--tokens-per-minute", help=f"Tokens per minute: {_VALUE_HELP}", metavar="V"
    ),
]
TokensPerDay = Annotated[
    str | None,
    typer.Option("--tpd", "--tokens-per-day", help=f"Tokens per day: {_VALUE_HELP}", metavar="V"),
]
ConcurrentRequests = Annotated[
    str | None,
    typer.Option(
        "--concurrency",
        "--concurrent-requests",
        help=f"Requests at the same time: {_VALUE_HELP}",
        metavar="V",
    ),
]

_DEFAULT = "default"
_WHOLE_NUMBER = re.compile(r"-?\d{1,30}")
_COLUMN_TITLES: dict[LimitName, str] = {
    "requests_per_minute": "requests/min",
    "tokens_per_minute": "tokens/min",
    "tokens_per_day": "tokens/day",
    "concurrent_requests": "concurrent",
}


def _tier_limits(settings: Settings) -> TierLimits:
    try:
        return TierLimits(settings.tier_limits)
    except ConfigError as exc:
        fail(str(exc))


def _scope(tier: str | None, account: str | None, key: str | None) -> tuple[Scope, str]:
    try:
        return parse_scope(tier, account, key)
    except InvalidRequest as exc:
        fail(exc.message)


def _admin(database: Database, settings: Settings, tiers: TierLimits) -> LimitAdmin:
    book = LimitBook(database, tiers)
    known_tiers = TierPolicy(settings.tier_access).tiers()
    return LimitAdmin(book, AccountService(database), known_tiers=known_tiers)


def _tier_names(settings: Settings, tiers: TierLimits) -> list[str]:
    """The tiers of the access policy (in its order), then those only limits name."""
    names = list(TierPolicy(settings.tier_access).tiers())
    return names + [tier for tier in tiers.tiers() if tier not in names]


async def _tier_views(admin: LimitAdmin, names: list[str]) -> list[LimitsView]:
    return [await admin.show("tier", name) for name in names]


def _parse_value(text: str) -> int | str | None:
    """A limit as typed: a whole number, ``unlimited``, or ``default`` (None: clear it).

    Anything else is passed on as typed, for :func:`parse_settings` to refuse.
    """
    word = text.strip().lower()
    if word == _DEFAULT:
        return None
    if _WHOLE_NUMBER.fullmatch(word):
        return int(word)
    return UNLIMITED if word == UNLIMITED else text


def _changes(values: dict[LimitName, str | None]) -> LimitSettings:
    """The settings the options ask for; exits with a message if none or a bad one."""
    given: dict[str, int | str | None] = {
        name: _parse_value(text) for name, text in values.items() if text is not None
    }
    if not given:
        fail("Name at least one limit to set: --rpm, --tpm, --tpd or --concurrency.")
    try:
        return parse_settings(given)
    except ValueError as exc:
        fail(f"Invalid limits: {exc}.")


def _number(value: int | str | None, *, missing: str) -> str:
    if value is None:
        return missing
    return f"{value:,}" if isinstance(value, int) else str(value)


def _view_json(view: LimitsView) -> dict[str, Any]:
    return view.wire().model_dump()  # as the admin API answers: unlimited is "limit": null


def _tiers_table(views: list[LimitsView]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("tier", no_wrap=True)
    for name in LIMIT_NAMES:
        table.add_column(_COLUMN_TITLES[name], justify="right", no_wrap=True)
    for view in views:
        values = [_number(view.limits[name].value, missing=UNLIMITED) for name in LIMIT_NAMES]
        table.add_row(Text(view.subject, style="bold"), *values)
    return table


def _heading(view: LimitsView) -> Text:
    heading = Text.assemble((f"{view.scope} {view.subject}", "bold"))
    if view.scope == "key" and view.account is not None:
        heading.append(f" · account {view.account}")
    if view.scope != "tier" and view.tier is not None:
        heading.append(f" · tier {view.tier}")
    return heading


def _subject_table(view: LimitsView) -> Table:
    """Per limit: what is set on the subject, and what is in force (and where from)."""
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("limit", no_wrap=True)
    table.add_column("set here", justify="right", no_wrap=True)
    in_force = view.account_limits if view.scope == "key" else view.limits
    title = "account's limit" if view.scope == "key" else "in force"
    table.add_column(title, justify="right", no_wrap=True)
    table.add_column("from", no_wrap=True)
    for name in LIMIT_NAMES:
        limit = (in_force or {}).get(name)
        table.add_row(
            name,
            _number(view.set.value(name), missing="-"),
            _number(limit.value, missing=UNLIMITED) if limit else "-",
            limit.source if limit else "-",
        )
    return table


def _explanation(view: LimitsView) -> str:
    if view.scope == "tier":
        return "Each account of the tier has these limits unless it has its own."
    if view.scope == "account":
        return "Shared by all the account's keys; a limit not set here is its tier's."
    return "A request must fit both this key's own limits and its account's."


def _key_notes(view: LimitsView) -> list[str]:
    """For a key: each of its own limits that is above its account's (which still applies)."""
    notes: list[str] = []
    for name, own in view.limits.items():
        account = (view.account_limits or {}).get(name)
        if account is None or account.value is None:
            continue
        if own.value is None or own.value > account.value:
            notes.append(
                f"Note: this key's {name} ({_number(own.value, missing=UNLIMITED)}) is above "
                f"its account's ({account.value:,}); the account's limit still applies."
            )
    return notes


def _print_view(view: LimitsView) -> None:
    notes = [Text(note, style="yellow") for note in _key_notes(view)]
    Console().print(Group(_heading(view), _subject_table(view), _explanation(view), *notes))


@limits_app.command("show")
def show(
    tier: TierOption = None,
    account: AccountOption = None,
    key: KeyOption = None,
    as_json: JsonOutput = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Show every tier's limits, or what is set on a tier, an account or a key and the
    limits in force for it."""
    settings = make_settings(data_dir=data_dir, database_url=database_url)
    tiers = _tier_limits(settings)
    if tier is None and account is None and key is None:
        names = _tier_names(settings, tiers)
        views = run_with_database(
            settings, lambda database: _tier_views(_admin(database, settings, tiers), names)
        )
        _print_tiers(views, as_json=as_json)
        return
    scope, subject = _scope(tier, account, key)
    view = run_with_database(
        settings, lambda database: _admin(database, settings, tiers).show(scope, subject)
    )
    if as_json:
        typer.echo(json.dumps(_view_json(view)))
    else:
        _print_view(view)


def _print_tiers(views: list[LimitsView], *, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([_view_json(view) for view in views]))
        return
    Console().print(
        Group(
            _tiers_table(views),
            "Account and key settings override these: an account's replace its tier's, a "
            "key's narrow its account's (infermesh limits show --account A | --key K).",
        )
    )


@limits_app.command("set")
def set_limits(
    tier: TierOption = None,
    account: AccountOption = None,
    key: KeyOption = None,
    rpm: RequestsPerMinute = None,
    tpm: TokensPerMinute = None,
    tpd: TokensPerDay = None,
    concurrency: ConcurrentRequests = None,
    as_json: JsonOutput = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Set limits of a tier, an account (replacing its tier's) or a key (narrowing its
    account's)."""
    settings = make_settings(data_dir=data_dir, database_url=database_url)
    scope, subject = _scope(tier, account, key)
    changes = _changes(
        {
            "requests_per_minute": rpm,
            "tokens_per_minute": tpm,
            "tokens_per_day": tpd,
            "concurrent_requests": concurrency,
        }
    )
    tiers = _tier_limits(settings)
    view = run_with_database(
        settings,
        lambda database: _admin(database, settings, tiers).update(scope, subject, changes),
    )
    if as_json:
        typer.echo(json.dumps(_view_json(view)))
        return
    _print_view(view)
    Console().print(
        f"Running gateways apply it within {settings.limits_cache_ttl:g} s "
        "(INFERMESH_LIMITS_CACHE_TTL)."
    )
