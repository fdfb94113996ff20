"""Seeded random mutations of valid request bodies, for the routes' fuzz tests: each
mutated body must get an answer or a clear error in the route's envelope, never a 5xx."""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator, Sequence
from typing import Any

ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1.5, 2**70, 10**30, -(10**30), "", "x", "auto", "text",
    "\u0000\ud7ff\U0001f600", "a" * 3000, [], [{}], [None], {}, {"type": None},
    [[[[[]]]]], {"a": {"b": {"c": {}}}},
]  # fmt: skip
"""Values of every JSON type, and some that are near limits or malformed text."""


def places(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value inside ``value`` (the root's is ``()``)."""
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from places(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from places(item, (*path, index))


def mutated(
    rng: random.Random,
    body: dict[str, Any],
    odd_values: Sequence[Any] = (),
    *,
    extra_keys: Sequence[str] = (),
) -> dict[str, Any]:
    """``body`` with one to three random changes at random places: a key dropped, a list
    item repeated, or a value replaced by an odd one (``ODD_VALUES`` and ``odd_values``);
    sometimes one of ``extra_keys`` added with an odd value."""
    odd = [*ODD_VALUES, *odd_values]
    body = copy.deepcopy(body)
    for _ in range(rng.randint(1, 3)):
        candidates = [place for place in places(body) if place]
        if not candidates:  # everything was dropped
            break
        path = rng.choice(candidates)
        parent: Any = body
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        action = rng.random()
        if action < 0.3 and isinstance(parent, dict):
            del parent[last]
        elif action < 0.4 and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))
        else:
            parent[last] = copy.deepcopy(rng.choice(odd))
    if extra_keys and rng.random() < 0.2:
        body[rng.choice(extra_keys)] = copy.deepcopy(rng.choice(odd))
    return body
