"""What the chat lifecycle cannot honour in an Anthropic request, refused by name.

A field sent with a null value (or, at the top level, an empty one) asks for nothing and
is accepted.
"""

from __future__ import annotations

from typing import NoReturn

from pydantic import BaseModel

from infermesh.errors import InvalidRequest
from infermesh.protocol.anthropic import (
    CacheControl,
    MessagesInput,
    OtherBlock,
    OtherSource,
    ServerTool,
)

UNSUPPORTED_FIELDS: dict[str, str] = {
    "container": "code execution containers",
    "mcp_servers": "MCP servers",
    "context_management": "server-side context editing",
    "diagnostics": "prompt-cache diagnostics",
    "inference_geo": "choosing where inference runs",
    "user_profile_id": "user profiles",
    "workspace_id": "workspaces",
}
"""Anthropic parameters the gateway knows and cannot honour, with what they are for."""

_NOT_CHECKED = (OtherBlock, OtherSource, ServerTool, CacheControl)
"""Kinds refused as a whole (or, cache_control, ignored), whose fields are not looked at."""


def refuse(param: str, message: str, *, code: str = "unsupported_parameter") -> NoReturn:
    """Refuse the request for ``param`` (a 400 naming it)."""
    raise InvalidRequest(message, param=param, code=code)


def shown(name: str) -> str:
    """A name the client chose, cut short enough to quote in an error."""
    return name if len(name) <= 64 else name[:64] + "…"


def refuse_unsupported(body: MessagesInput) -> None:
    """Refuse the fields of ``body`` the chat lifecycle cannot honour, and those
    infermesh does not know (Anthropic refuses those too)."""
    for name, value in (body.model_extra or {}).items():
        if value is None or value == [] or value == {}:
            continue
        if name in UNSUPPORTED_FIELDS:
            refuse(name, f"'{name}' ({UNSUPPORTED_FIELDS[name]}) is not supported by infermesh.")
        name = shown(name)
        refuse(name, f"'{name}' is not a parameter infermesh knows.", code="unknown_parameter")
    unknown = _first_unknown_field(body, "")
    if unknown is not None:
        refuse(unknown, f"'{unknown}' is not a field infermesh knows.", code="unknown_parameter")
    if body.thinking is not None and body.thinking.type in ("enabled", "between_tools"):
        refuse(
            "thinking",
            "Extended thinking is not supported: infermesh's models answer without thinking "
            'blocks. Leave thinking out, or send {"type": "disabled"}.',
        )
    if body.speed == "fast":
        refuse("speed", "The 'fast' speed mode is not supported by infermesh.")
    if body.output_config is not None and body.output_config.effort is not None:
        refuse("output_config.effort", "output_config.effort is not supported by infermesh.")


def _first_unknown_field(model: BaseModel, path: str) -> str | None:
    """The first field below the top level that ``model``'s type does not declare and
    that has a value (a null asks for nothing)."""
    if path:
        for name, value in (model.model_extra or {}).items():
            if value is not None:
                return f"{path}.{shown(name)}"
    for name in type(model).model_fields:
        value = getattr(model, name)
        where = f"{path}.{name}" if path else name
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            if isinstance(item, BaseModel) and not isinstance(item, _NOT_CHECKED):
                found = _first_unknown_field(
                    item, f"{where}[{index}]" if item is not value else where
                )
                if found is not None:
                    return found
    return None
