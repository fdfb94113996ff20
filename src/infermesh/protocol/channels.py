"""Channel objects: ``POST /v1/channel``, ``GET /v1/channel`` and its members."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from infermesh.protocol.base import WireModel


class ChannelPost(WireModel):
    """A message to post. The channel is made by its first post, ``public`` unless
    ``visibility`` says ``private`` (given for an existing channel, it must match)."""

    channel: str = Field(max_length=200)
    content: str
    metadata: dict[str, Any] | None = None
    visibility: Literal["public", "private"] | None = None


class ChannelMessageObject(WireModel):
    """One message; ``author`` is the posting account's name."""

    object: Literal["channel.message"] = "channel.message"
    id: str
    channel: str
    author: str
    content: str
    metadata: dict[str, Any] | None
    created: int


class ChannelMessageList(WireModel):
    """Messages oldest first; ``has_more`` when newer ones follow: pass ``last_id`` as
    ``after`` for the next page (or to wait for the next message)."""

    object: Literal["list"] = "list"
    channel: str
    data: list[ChannelMessageObject]
    has_more: bool
    last_id: str | None


class ChannelMemberRequest(WireModel):
    """An account to let into (or out of) the caller's private channel."""

    channel: str = Field(max_length=200)
    account: str = Field(max_length=200)


class ChannelObject(WireModel):
    """A channel; ``members`` is shown to the owner of a private channel only."""

    object: Literal["channel"] = "channel"
    name: str
    visibility: str
    owner: str
    members: list[str] | None
    created: int
