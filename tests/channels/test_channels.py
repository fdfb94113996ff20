"""Channels over real HTTP, on SQLite and PostgreSQL: posting, paging, long-polling,
live streams, private channels and every limit; and a long-poll on one gateway woken
by a post on another gateway that shares PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from infermesh.channels.notify import RedisChannelNotifier
from tests.support.gateway import RunningGateway, create_key, start_gateway, start_gateway_on
from tests.support.redis import redis_url, require_redis, unique_prefix
from tests.support.waiting import wait_until

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="module", params=BACKENDS)
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    data_dir = tmp_path_factory.mktemp(f"channels-{request.param}")
    with start_gateway_on(request.param, data_dir, specs=[]) as running:
        yield running


class Agent:
    """An account's key on a gateway, and what it does with channels."""

    def __init__(self, gateway: RunningGateway, key: str, name: str) -> None:
        self.name = name
        self.http = httpx.Client(
            base_url=gateway.base_url, timeout=60, headers={"Authorization": f"Bearer {key}"}
        )

    def post(self, channel: str, content: str, **extra: Any) -> httpx.Response:
        return self.http.post("/v1/channel", json={"channel": channel, "content": content, **extra})

    def read(self, channel: str, **params: Any) -> httpx.Response:
        return self.http.get("/v1/channel", params={"channel": channel, **params})

    def messages(self, channel: str, **params: Any) -> dict[str, Any]:
        response = self.read(channel, **params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


_counter = iter(range(1_000_000))


def agent(gateway: RunningGateway) -> Agent:
    """A key of a new account on ``gateway``."""
    name = f"agent-{next(_counter)}-{id(gateway) % 10_000}"
    return Agent(gateway, asyncio.run(create_key(gateway.settings, name)), name)


def new_channel() -> str:
    return f"ch-{next(_counter)}"


def refused(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["message"]
    assert response.headers.get("x-request-id")
    if code is not None:
        assert error["code"] == code, error
    return error


# --- posting and reading ---------------------------------------------------------------


def test_a_post_is_stored_and_read_back_in_pages(gateway: RunningGateway) -> None:
    alice, bob = agent(gateway), agent(gateway)
    channel = new_channel()
    first = alice.post(channel, "hello", metadata={"task": 7, "tags": ["a", "b"]})
    assert first.status_code == 200, first.text
    message = first.json()
    assert message["object"] == "channel.message" and message["id"].startswith("msg_")
    assert message["channel"] == channel and message["author"] == alice.name
    assert message["content"] == "hello" and message["metadata"] == {"task": 7, "tags": ["a", "b"]}
    assert gateway.key not in first.text
    for n in range(24):
        assert (bob if n % 2 else alice).post(channel, f"m{n}").status_code == 200

    page = bob.messages(channel, limit=10)
    assert [m["content"] for m in page["data"]] == ["hello"] + [f"m{n}" for n in range(9)]
    assert page["has_more"] is True and page["last_id"] == page["data"][-1]["id"]
    seen = [m["content"] for m in page["data"]]
    while page["has_more"]:
        page = bob.messages(channel, limit=10, after=page["last_id"])
        seen += [m["content"] for m in page["data"]]
    assert seen == ["hello"] + [f"m{n}" for n in range(24)]
    assert page["has_more"] is False and len(page["data"]) == 5
    authors = {m["author"] for m in bob.messages(channel, limit=100)["data"]}
    assert authors == {alice.name, bob.name}
    empty = bob.messages(channel, after=page["last_id"])
    assert empty["data"] == [] and empty["last_id"] is None and empty["has_more"] is False


def test_bad_input_is_refused_clearly(gateway: RunningGateway) -> None:
    alice = agent(gateway)
    channel = new_channel()
    assert alice.post(channel, "first").status_code == 200
    refused(alice.http.post("/v1/channel", json={"content": "no channel"}), 400)
    for name in ("", "-starts-with-dash", "has space", "x" * 65, "semi;colon", "ünïcode"):
        refused(alice.post(name, "hi"), 400, "invalid_channel_name")
    refused(alice.post(channel, ""), 400)
    refused(alice.post(channel, "x" * 16_385), 400, "content_too_long")
    refused(alice.post(channel, "hi", metadata={"blob": "x" * 5000}), 400, "metadata_too_large")
    deep: dict[str, Any] = {}
    for _ in range(12):
        deep = {"d": deep}
    refused(alice.post(channel, "hi", metadata=deep), 400)
    refused(alice.post(channel, "hi", metadata=["not", "an", "object"]), 400)
    refused(alice.post(channel, "hi", visibility="secret"), 400)
    refused(
        alice.http.post(
            "/v1/channel", content=b"{not json", headers={"content-type": "application/json"}
        ),
        400,
    )
    for cursor in ("12", "msg_", "msg_x", "msg_" + "9" * 30):
        refused(alice.read(channel, after=cursor), 400)
    refused(alice.read(channel, limit=0), 400)
    refused(alice.read(channel, limit=101), 400)
    refused(alice.read(channel, wait=-1), 400)
    refused(alice.read(channel, wait=31), 400)
    refused(alice.read("never-posted-to"), 404, "channel_not_found")
    refused(alice.http.get("/v1/channel"), 400)
    assert (
        httpx.get(f"{gateway.base_url}/v1/channel", params={"channel": channel}).status_code == 401
    )
    assert [m["content"] for m in alice.messages(channel)["data"]] == ["first"]


# --- private channels ------------------------------------------------------------------


def test_a_private_channel_is_invisible_to_others_until_they_are_added(
    gateway: RunningGateway,
) -> None:
    owner, guest, stranger = agent(gateway), agent(gateway), agent(gateway)
    channel = new_channel()
    assert owner.post(channel, "secret plan", visibility="private").status_code == 200

    for other in (guest, stranger):
        refused(other.read(channel), 404, "channel_not_found")
        refused(other.read(channel, wait=1), 404, "channel_not_found")
        refused(other.post(channel, "let me in"), 404, "channel_not_found")
        refused(other.http.get("/v1/channel/info", params={"channel": channel}), 404)
    refused(stranger.post(channel, "hi", visibility="public"), 404)  # no hint it exists
    refused(owner.post(channel, "now public?", visibility="public"), 409, "channel_exists")
    missing = owner.http.post(
        "/v1/channel/members", json={"channel": channel, "account": "nobody-here"}
    )
    refused(missing, 404)

    added = owner.http.post("/v1/channel/members", json={"channel": channel, "account": guest.name})
    assert added.status_code == 200, added.text
    assert added.json()["members"] == [guest.name] and added.json()["visibility"] == "private"
    assert guest.post(channel, "thanks").status_code == 200
    assert [m["content"] for m in guest.messages(channel)["data"]] == ["secret plan", "thanks"]
    info = guest.http.get("/v1/channel/info", params={"channel": channel}).json()
    assert info["owner"] == owner.name and info["members"] is None  # only the owner sees them
    refused(stranger.read(channel), 404)
    by_guest = guest.http.post(
        "/v1/channel/members", json={"channel": channel, "account": stranger.name}
    )
    refused(by_guest, 400, "not_channel_owner")

    removed = owner.http.delete(
        "/v1/channel/members", params={"channel": channel, "account": guest.name}
    )
    assert removed.status_code == 200 and removed.json()["members"] == []
    refused(guest.read(channel), 404)
    public = new_channel()
    assert owner.post(public, "open").status_code == 200
    refused(
        owner.http.post("/v1/channel/members", json={"channel": public, "account": guest.name}), 400
    )


# --- waiting for messages --------------------------------------------------------------


def waiting_on(gateway: RunningGateway, count: int) -> bool:
    """Whether ``count`` long-polls or streams are open on the gateway."""
    return sum(gateway.app.state.services.channels._following.values()) == count


def test_a_long_poll_returns_as_soon_as_another_client_posts(gateway: RunningGateway) -> None:
    reader, writer = agent(gateway), agent(gateway)
    channel = new_channel()
    cursor = writer.post(channel, "before").json()["id"]
    with ThreadPoolExecutor(max_workers=1) as pool:
        polled: Future[httpx.Response] = pool.submit(reader.read, channel, after=cursor, wait=30)
        wait_until(lambda: waiting_on(gateway, 1), timeout=10, what="the reader waits")
        assert not polled.done()
        posted = writer.post(channel, "wake up").json()
        response = polled.result(timeout=25)
    assert response.status_code == 200
    assert [m["id"] for m in response.json()["data"]] == [posted["id"]]
    timed_out = reader.messages(channel, after=posted["id"], wait=0.2)
    assert timed_out["data"] == [] and timed_out["last_id"] is None
    assert waiting_on(gateway, 0)


def test_a_live_stream_delivers_each_new_message(gateway: RunningGateway) -> None:
    reader, writer = agent(gateway), agent(gateway)
    channel = new_channel()
    writer.post(channel, "history")
    events: list[dict[str, Any]] = []
    opened = threading.Event()

    def follow() -> None:
        with reader.http.stream(
            "GET",
            "/v1/channel",
            params={"channel": channel},
            headers={"Accept": "text/event-stream"},
        ) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith(":"):
                    opened.set()
                if line.startswith("data: "):
                    events.append(json.loads(line[len("data: ") :]))
                    if len(events) == 2:
                        return

    with ThreadPoolExecutor(max_workers=1) as pool:
        following = pool.submit(follow)
        assert opened.wait(10)
        wait_until(lambda: waiting_on(gateway, 1), timeout=10, what="the stream waits")
        first = writer.post(channel, "one").json()
        second = writer.post(channel, "two", metadata={"n": 2}).json()
        following.result(timeout=30)
    assert [e["id"] for e in events] == [first["id"], second["id"]]  # not the history
    assert events[1]["metadata"] == {"n": 2} and events[0]["author"] == writer.name
    wait_until(lambda: waiting_on(gateway, 0), timeout=10, what="the stream closed")
    refused(
        reader.http.get(
            "/v1/channel", params={"channel": "nope"}, headers={"Accept": "text/event-stream"}
        ),
        404,
    )


# --- limits ----------------------------------------------------------------------------


@pytest.fixture
def strict(tmp_path: Path) -> Iterator[RunningGateway]:
    """A gateway with small channel limits."""
    with start_gateway(
        tmp_path,
        specs=[],
        channel_posts_per_minute=5,
        channel_retention=4,
        channel_max_owned=2,
        channel_max_followers=1,
        channel_max_content=100,
    ) as running:
        yield running


def test_channel_limits_are_enforced(strict: RunningGateway) -> None:
    alice, bob = agent(strict), agent(strict)
    channel = new_channel()
    for n in range(5):
        assert alice.post(channel, f"m{n}").status_code == 200
    limited = alice.post(channel, "one too many")
    refused(limited, 429, "channel_rate_limited")
    assert int(limited.headers["retry-after"]) >= 1
    for n in range(5, 8):
        assert bob.post(channel, f"m{n}").status_code == 200  # the limit is per account
    kept = [m["content"] for m in bob.messages(channel, limit=100)["data"]]
    assert kept == ["m4", "m5", "m6", "m7"]  # retention: the newest 4

    carol = agent(strict)
    assert carol.post(new_channel(), "mine").status_code == 200
    assert carol.post(new_channel(), "mine too").status_code == 200
    refused(carol.post(new_channel(), "a third of mine"), 429, "too_many_channels")
    refused(carol.post(channel, "x" * 101), 400, "content_too_long")

    newest = bob.messages(channel, limit=100)["last_id"]
    with ThreadPoolExecutor(max_workers=1) as pool:
        polled = pool.submit(bob.read, channel, after=newest, wait=30)
        wait_until(lambda: waiting_on(strict, 1), timeout=10, what="one long-poll")
        refused(bob.read(channel, after=newest, wait=5), 429, "too_many_channel_followers")
        assert bob.messages(channel, limit=1)["data"]  # reading without waiting is fine
        other = alice.messages(channel, after=newest, wait=0.1)  # its own allowance
        assert other["data"] == []
        agent(strict).post(channel, "release")
        assert [m["content"] for m in polled.result(timeout=25).json()["data"]] == ["release"]


# --- many gateways ---------------------------------------------------------------------


@pytest.mark.postgres
def test_a_post_on_one_gateway_wakes_a_long_poll_on_another(tmp_path: Path) -> None:
    """Two gateways share PostgreSQL and Redis: a reader waiting on one returns when a
    message is posted through the other, woken by the Redis notice."""
    require_redis()
    from tests.support.postgres import postgres_database

    shared = {"redis_url": redis_url(), "redis_prefix": unique_prefix(), "specs": []}
    with (
        postgres_database() as database_url,
        start_gateway(tmp_path / "a", database_url=database_url, **shared) as first,
        start_gateway(tmp_path / "b", database_url=database_url, **shared) as second,
    ):
        writer, reader = agent(first), agent(second)
        channel = new_channel()
        cursor = writer.post(channel, "before").json()["id"]
        notifier = second.app.state.services.channels.notifier
        assert isinstance(notifier, RedisChannelNotifier)
        heard = notifier.heard
        with ThreadPoolExecutor(max_workers=1) as pool:
            polled = pool.submit(reader.read, channel, after=cursor, wait=30)
            wait_until(lambda: waiting_on(second, 1), timeout=10, what="the reader waits")
            posted = writer.post(channel, "from the other gateway").json()
            response = polled.result(timeout=25)
        assert [m["id"] for m in response.json()["data"]] == [posted["id"]]
        assert notifier.heard > heard  # woken by the other gateway's notice
