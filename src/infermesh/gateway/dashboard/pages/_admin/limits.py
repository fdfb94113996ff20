"""An account's own rate limits as the admin's form shows and sets them.

An account's own limit replaces its tier's: a whole number, ``unlimited``, or blank
for none of its own (the tier's applies). The same settings as ``PATCH
/admin/accounts/{name}/limits`` and ``infermesh limits set --account``.
"""

from __future__ import annotations

from dataclasses import dataclass

from infermesh.gateway.dashboard.limit_fields import LIMIT_LABELS, limit_settings, typed_limit
from infermesh.limits.admin import LimitsView
from infermesh.limits.policy import LIMIT_NAMES, LimitName, LimitSettings, LimitValue


@dataclass(frozen=True, slots=True)
class LimitRow:
    """One limit of the form: the account's own setting and the limit in force."""

    name: LimitName
    label: str
    own: str
    in_force: int | None
    source: str


def limit_rows(view: LimitsView) -> list[LimitRow]:
    """Per limit: what the account has set (as the field shows it), what is in force,
    and where that was set (``tier`` or ``account``)."""
    rows: list[LimitRow] = []
    for name in LIMIT_NAMES:
        limit = view.limits.get(name)
        own = view.set.value(name)
        rows.append(
            LimitRow(
                name=name,
                label=LIMIT_LABELS[name],
                own="" if own is None else str(own),
                in_force=limit.value if limit is not None else None,
                source=limit.source if limit is not None else "tier",
            )
        )
    return rows


def limit_changes(fields: dict[str, str]) -> LimitSettings:
    """The account's own limits as the form sets them; a limit the form leaves out is
    left as it is, a blank one is cleared."""
    changes: dict[str, LimitValue | None] = {
        name: typed_limit(name, fields[name], unlimited=True)
        for name in LIMIT_NAMES
        if name in fields
    }
    return limit_settings(changes)
