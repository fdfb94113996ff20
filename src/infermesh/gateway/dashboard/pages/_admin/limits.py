"""An account's own rate limits as the admin's form shows and sets them.

An account's own limit replaces its tier's: a whole number, ``unlimited``, or blank
for none of its own (the tier's applies). The same settings as ``PATCH
/admin/accounts/{name}/limits`` and ``infermesh limits set --account``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from infermesh.errors import InvalidRequest
from infermesh.gateway.dashboard.pages.keys import LIMIT_LABELS
from infermesh.limits.admin import LimitsView
from infermesh.limits.policy import (
    LIMIT_NAMES,
    UNLIMITED,
    LimitName,
    LimitSettings,
    LimitValue,
    parse_settings,
)

_WHOLE_NUMBER = re.compile(r"[0-9]{1,16}")


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
        name: _limit_value(name, fields[name]) for name in LIMIT_NAMES if name in fields
    }
    try:
        return parse_settings(changes)
    except ValueError as exc:
        raise InvalidRequest(f"Invalid limits: {exc}.", code="invalid_limits") from None


def _limit_value(name: LimitName, typed: str) -> LimitValue | None:
    text = typed.strip().replace(",", "").replace("_", "").lower()
    if not text:
        return None
    if text == UNLIMITED:
        return "unlimited"
    if not _WHOLE_NUMBER.fullmatch(text):
        raise InvalidRequest(
            f'{LIMIT_LABELS[name]}: give a whole number or "{UNLIMITED}", or leave it blank.',
            param=name,
            code="invalid_limits",
        )
    return int(text)
