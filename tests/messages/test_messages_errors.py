"""Errors of the Messages API: every one in Anthropic's envelope, with its status and the
request id; what cannot be honoured is refused by name; no input makes a 5xx."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.messages.conftest import sdk_client
from tests.messages.samples import PNG_BLOCK, WEATHER, user
from tests.support.fuzz import mutated
from tests.support.gateway import RunningGateway, create_key

JSON = dict[str, Any]
VALID: JSON = {"model": "scripted", "max_tokens": 16, "messages": user("hello")}


def post(
    gateway: RunningGateway,
    body: JSON | bytes | Iterator[bytes],
    *,
    path: str = "/v1/messages",
    key: str | None = None,
) -> httpx.Response:
    headers = {"anthropic-version": "2023-06-01", "content-type": "application/json"}
    if key != "":
        headers["x-api-key"] = key or gateway.key
    content = json.dumps(body).encode() if isinstance(body, dict) else body
    with gateway.http() as http:
        return http.post(path, content=content, headers=headers)


def refused(response: httpx.Response, status: int, kind: str) -> str:
    """The message of an error answer, once its shape, status and headers are checked."""
    assert response.status_code == status, response.text
    request_id = response.headers["x-request-id"]
    assert response.headers["request-id"] == request_id
    body = response.json()
    assert body["type"] == "error" and body["request_id"] == request_id
    assert body["error"]["type"] == kind and set(body["error"]) == {"type", "message"}
    message: str = body["error"]["message"]
    assert message
    return message


def with_fields(**fields: Any) -> JSON:
    return {**VALID, **fields}


def test_max_tokens_is_required(gateway: RunningGateway) -> None:
    body = {"model": "scripted", "messages": user("hi")}
    assert "max_tokens" in refused(post(gateway, body), 400, "invalid_request_error")
    counted = post(gateway, body, path="/v1/messages/count_tokens")
    assert counted.status_code == 200 and counted.json()["input_tokens"] > 0


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": "ten"}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": "hi"}, "messages"),
        ({"messages": []}, "messages"),
        ({"temperature": 1.5}, "temperature"),
        ({"model": 5}, "model"),
        ({"stream": "maybe"}, "stream"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0].text",
        ),
    ],
)
def test_wrong_types_are_named(gateway: RunningGateway, fields: JSON, param: str) -> None:
    assert f"'{param}'" in refused(
        post(gateway, with_fields(**fields)), 400, "invalid_request_error"
    )


@pytest.mark.parametrize("body", [b'{"model": "scripted", "max_tokens": ', b"", b"[1, 2]", b'"x"'])
def test_bodies_that_are_not_json_objects(gateway: RunningGateway, body: bytes) -> None:
    refused(post(gateway, body), 400, "invalid_request_error")
    refused(post(gateway, body, path="/v1/messages/count_tokens"), 400, "invalid_request_error")


def test_an_unknown_model_is_not_found(gateway: RunningGateway) -> None:
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        message = refused(
            post(gateway, with_fields(model="claude-nope"), path=path), 404, "not_found_error"
        )
        assert "claude-nope" in message


def test_a_bad_or_missing_key_is_an_authentication_error(gateway: RunningGateway) -> None:
    refused(post(gateway, VALID, key="sk-wrong"), 401, "authentication_error")
    refused(post(gateway, VALID, key=""), 401, "authentication_error")
    refused(
        post(gateway, VALID, key="sk-wrong", path="/v1/messages/count_tokens"),
        401,
        "authentication_error",
    )
    with pytest.raises(anthropic.AuthenticationError) as caught:
        sdk_client(gateway, api_key="sk-wrong").messages.create(**VALID)
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert caught.value.request_id is not None


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, "thinking"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        ({"container": "container_1"}, "container"),
        (
            {"mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "x"}]},
            "mcp_servers",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages[0].content[0].type",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "x", "citations": [{}]}]}
                ]
            },
            "messages[0].content[0].citations",
        ),
        (
            {"messages": [*user("hi"), {"role": "assistant", "content": "Sure:"}]},
            "messages[1].role",
        ),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(
    gateway: RunningGateway, fields: JSON, param: str
) -> None:
    assert param in refused(post(gateway, with_fields(**fields)), 400, "invalid_request_error")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (
            {
                "model": "scripted-plain",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "x"}, PNG_BLOCK]}
                ],
            },
            "messages[0].content[1].source",
        ),
        ({"model": "scripted-plain", "tools": [WEATHER]}, "tools"),
        ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"tool_choice": {"type": "tool", "name": "nope"}, "tools": [WEATHER]}, "tool_choice"),
    ],
)
def test_the_chat_lifecycles_errors_name_anthropic_fields(
    gateway: RunningGateway, fields: JSON, param: str
) -> None:
    message = refused(post(gateway, with_fields(**fields)), 400, "invalid_request_error")
    assert message.startswith(param) or f"'{param}'" in message


def test_an_account_without_credit_gets_a_billing_error(gateway: RunningGateway) -> None:
    broke = asyncio.run(create_key(gateway.settings, f"broke-{uuid.uuid4().hex[:6]}", grant=0))
    refused(post(gateway, VALID, key=broke), 402, "billing_error")
    refused(post(gateway, with_fields(stream=True), key=broke), 402, "billing_error")


def test_a_rate_limited_key_gets_a_rate_limit_error(gateway: RunningGateway) -> None:
    limited = asyncio.run(
        create_key(gateway.settings, f"std-{uuid.uuid4().hex[:6]}", tier="standard")
    )
    responses = [post(gateway, VALID, key=limited) for _ in range(3)]
    assert [response.status_code for response in responses] == [200, 200, 429]
    refused(responses[2], 429, "rate_limit_error")
    assert int(responses[2].headers["retry-after"]) >= 1
    assert responses[2].headers["x-ratelimit-limit-requests"] == "2"
    assert responses[1].headers["x-ratelimit-remaining-requests"] == "0"


def test_a_tier_without_the_model_is_refused(gateway: RunningGateway) -> None:
    free = asyncio.run(create_key(gateway.settings, f"free-{uuid.uuid4().hex[:6]}", tier="free"))
    assert "scripted" in refused(post(gateway, VALID, key=free), 402, "billing_error")


def test_a_failing_engine_is_an_api_error(gateway: RunningGateway) -> None:
    for stream in (False, True):
        response = post(gateway, with_fields(model="scripted-broken", stream=stream))
        refused(response, 502, "api_error")


def test_a_body_over_the_limit_is_too_large(gateway: RunningGateway) -> None:
    def chunks() -> Iterator[bytes]:  # no content-length: the route itself finds it too long
        yield b'{"model": "scripted", "max_tokens": 8, "messages": [{"role": "user", "content": "'
        for _ in range(300):
            yield b"x" * 1024
        yield b'"}]}'

    refused(post(gateway, chunks()), 413, "request_too_large")
    # with a content-length, the gateway refuses it before any route reads it; the
    # envelope is still Anthropic's on this route
    declared = with_fields(messages=[{"role": "user", "content": "x" * 300_000}])
    refused(post(gateway, declared), 413, "request_too_large")


def test_deep_json_is_refused_not_crashed_on(gateway: RunningGateway) -> None:
    deep: Any = {}
    for _ in range(100):
        deep = {"a": deep}
    history = [
        *user("hi"),
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": deep}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}],
        },
    ]
    message = refused(
        post(gateway, with_fields(messages=history, tools=[WEATHER])), 400, "invalid_request_error"
    )
    assert "messages[1].content[0].input" in message
    schema_deep = {**WEATHER, "input_schema": {"type": "object", "properties": deep}}
    message = refused(post(gateway, with_fields(tools=[schema_deep])), 400, "invalid_request_error")
    assert "tools[0].input_schema" in message
    very_deep = (
        b'{"model": "scripted", "max_tokens": 8, "metadata": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    )
    refused(post(gateway, very_deep), 400, "invalid_request_error")


def test_the_sdk_raises_its_own_errors(gateway: RunningGateway) -> None:
    client = sdk_client(gateway)
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(
            model="scripted",
            max_tokens=8,
            messages=user("x"),
            thinking={"type": "enabled", "budget_tokens": 1024},
        )
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "thinking" in bad.value.message
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="nope", messages=user("x"))


# --- fuzz ----------------------------------------------------------------------------

BASES: list[JSON] = [
    VALID,
    {
        "model": "scripted",
        "max_tokens": 12,
        "stream": True,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "stop_sequences": ["zz"],
        "temperature": 0.2,
        "metadata": {"user_id": "u"},
        "messages": user("stream this"),
    },
    {
        "model": "scripted",
        "max_tokens": 12,
        "tools": [WEATHER],
        "tool_choice": {"type": "auto"},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "look"}, PNG_BLOCK]},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"echo": "x"}}
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "sun"}],
                    }
                ],
            },
        ],
    },
]
ODD_VALUES: list[Any] = [
    "scripted", "user", "assistant", "image", "tool_use", "tool_result", "document",
    "base64", "url", "any", {"type": "text"}, {"type": "image", "source": {}},
    {"type": "tool_result"},
]  # fmt: skip
"""Values that are valid somewhere in a Messages body, besides fuzz's own odd ones."""
EXTRA_KEYS = ["thinking", "top_k", "tools", "speed", "service_tier", "extra"]


def test_random_mutations_of_valid_bodies_never_make_a_server_error(
    gateway: RunningGateway,
) -> None:
    key = asyncio.run(create_key(gateway.settings, "fuzzer"))
    rng = random.Random(20261130)
    outcomes: dict[int, int] = {}
    with gateway.http() as http:
        for round_ in range(200):
            body = mutated(rng, rng.choice(BASES), ODD_VALUES, extra_keys=EXTRA_KEYS)
            path = "/v1/messages/count_tokens" if round_ % 5 == 0 else "/v1/messages"
            response = http.post(path, content=json.dumps(body), headers={"x-api-key": key})
            outcomes[response.status_code] = outcomes.get(response.status_code, 0) + 1
            assert response.status_code < 500, (body, response.text)
            assert response.headers["x-request-id"]
            if response.status_code >= 400:
                error = response.json()
                assert error["type"] == "error" and error["error"]["message"], (body, error)
            elif response.headers["content-type"].startswith("text/event-stream"):
                assert (
                    response.text.rstrip()
                    .rsplit("\n", 1)[-1]
                    .startswith('data: {"type":"message_stop"')
                )
            elif path == "/v1/messages":
                assert response.json()["type"] == "message"
    assert outcomes.get(200, 0) >= 10 and outcomes.get(400, 0) >= 50, outcomes
