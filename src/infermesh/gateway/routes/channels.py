"""``/v1/channel``: post to a named channel, read it in pages, wait for its next message
(``wait``) or follow it live (``Accept: text/event-stream``); ``/v1/channel/members``
lets accounts into a private channel. Every call needs an API key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import StreamingResponse

from infermesh.channels.service import MAX_PAGE, ChannelRecord, MessageRecord
from infermesh.gateway.deps import PrincipalDep, ServicesDep
from infermesh.protocol.channels import (
    ChannelMemberRequest,
    ChannelMessageList,
    ChannelMessageObject,
    ChannelObject,
    ChannelPost,
)

router = APIRouter()


@router.post("/v1/channel")
async def post_message(
    body: ChannelPost, principal: PrincipalDep, services: ServicesDep
) -> ChannelMessageObject:
    """Post a message to a channel (made by this post if new)."""
    record = await services.channels.post(
        principal, body.channel, body.content, body.metadata, visibility=body.visibility
    )
    return message_object(record)


@router.get("/v1/channel", response_model=ChannelMessageList)
async def read_messages(
    principal: PrincipalDep,
    services: ServicesDep,
    channel: Annotated[str, Query(max_length=200)],
    after: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
    wait: Annotated[float, Query(ge=0)] = 0.0,
    accept: Annotated[str | None, Header()] = None,
) -> ChannelMessageList | Response:
    """Messages after ``after`` (the oldest kept first without it), ``limit`` at a
    time; with ``wait`` seconds, holds the request until a message comes. With
    ``Accept: text/event-stream``, streams every new message as it is posted."""
    channels = services.channels
    if accept is not None and "text/event-stream" in accept:
        follow = await channels.follow(principal, channel, after=after)
        return StreamingResponse(
            _events(follow),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )
    page = await channels.read(principal, channel, after=after, limit=limit, wait=wait)
    return ChannelMessageList(
        channel=page.channel,
        data=[message_object(message) for message in page.messages],
        has_more=page.has_more,
        last_id=page.last_id,
    )


@router.get("/v1/channel/info")
async def channel_info(
    principal: PrincipalDep,
    services: ServicesDep,
    channel: Annotated[str, Query(max_length=200)],
) -> ChannelObject:
    """A channel: its visibility, its owner (and, for the owner, its members)."""
    return channel_object(await services.channels.describe(principal, channel))


@router.post("/v1/channel/members")
async def add_member(
    body: ChannelMemberRequest, principal: PrincipalDep, services: ServicesDep
) -> ChannelObject:
    """Let an account into the caller's private channel."""
    record = await services.channels.set_member(principal, body.channel, body.account, member=True)
    return channel_object(record)


@router.delete("/v1/channel/members")
async def remove_member(
    principal: PrincipalDep,
    services: ServicesDep,
    channel: Annotated[str, Query(max_length=200)],
    account: Annotated[str, Query(max_length=200)],
) -> ChannelObject:
    """Take an account out of the caller's private channel."""
    record = await services.channels.set_member(principal, channel, account, member=False)
    return channel_object(record)


def message_object(record: MessageRecord) -> ChannelMessageObject:
    return ChannelMessageObject(
        id=record.id,
        channel=record.channel,
        author=record.author,
        content=record.content,
        metadata=record.metadata,
        created=int(record.created_at.timestamp()),
    )


def channel_object(record: ChannelRecord) -> ChannelObject:
    return ChannelObject(
        name=record.name,
        visibility=record.visibility,
        owner=record.owner,
        members=record.members,
        created=int(record.created_at.timestamp()),
    )


async def _events(follow: AsyncIterator[MessageRecord | None]) -> AsyncIterator[bytes]:
    """Server-sent events: one ``message`` event per message (its id as the event id,
    for ``Last-Event-ID``-style resuming with ``after``), comments to keep alive."""
    yield b": following\n\n"
    async for message in follow:
        if message is None:
            yield b": keep-alive\n\n"
            continue
        data = orjson.dumps(message_object(message).model_dump())
        yield b"id: " + message.id.encode() + b"\nevent: message\ndata: " + data + b"\n\n"
