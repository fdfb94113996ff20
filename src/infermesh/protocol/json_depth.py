"""How deep the JSON that crosses infermesh may nest, and the check for parsed values.

``json.loads`` recurses once per level and raises ``RecursionError`` (not ``ValueError``)
somewhere under a thousand levels, and pydantic's JSON parser, which reads job frames
on a worker, stops at about 200. A request's free-form values (tool parameters, a
response format's schema, fields we do not declare) are held to :data:`MAX_JSON_DEPTH`
at the gateway, so that a job frame, which holds the request a few levels deeper, is
always readable; the worker holds what it parses from model output to the same bound.
Real tool arguments and JSON schemas nest a handful of levels.
"""

from __future__ import annotations

from typing import Any

MAX_JSON_DEPTH = 64
"""The deepest nesting of objects and arrays accepted from a client, a worker or a model."""


def structure_nests_deeper_than(value: Any, depth: int) -> bool:
    """Whether the lists and dicts in ``value`` nest more than ``depth`` levels.

    It walks one level at a time, without recursion, and stops below ``depth + 1``.
    """
    layer = [value]
    for _ in range(depth + 1):
        containers = [item for item in layer if isinstance(item, dict | list)]
        if not containers:
            return False
        layer = [
            child
            for container in containers
            for child in (container.values() if isinstance(container, dict) else container)
        ]
    return True
