"""Every error is OpenAI's envelope with the right status and an x-request-id, never a 500."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import openai
import pytest

from infermesh.accounts.service import AccountService
from infermesh.store.database import Database
from tests.gateway.test_chat_engine import PNG_1PX
from tests.support.gateway import RunningGateway

HELLO = [{"role": "user", "content": "hello"}]


def assert_envelope(
    response: httpx.Response, status: int, *, code: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["x-request-id"]
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def post_chat(gateway: RunningGateway, body: Any, **kwargs: Any) -> httpx.Response:
    with gateway.http() as http:
        if isinstance(body, (bytes, str)):
            return http.post(
                "/v1/chat/completions",
                content=body,
                headers=gateway.auth() | {"content-type": "application/json"},
                **kwargs,
            )
        return http.post("/v1/chat/completions", json=body, headers=gateway.auth(), **kwargs)


def test_missing_invalid_and_revoked_keys_get_401(engine_gateway: RunningGateway) -> None:
    with engine_gateway.http() as http:
        missing = http.post("/v1/chat/completions", json={"model": "scripted", "messages": HELLO})
        wrong = http.post(
            "/v1/chat/completions",
            json={"model": "scripted", "messages": HELLO},
            headers={"Authorization": "Bearer sk-im-not-a-real-key"},
        )
    assert assert_envelope(missing, 401)["type"] == "authentication_error"
    assert_envelope(wrong, 401, code="invalid_api_key")
    client = engine_gateway.client(api_key="sk-im-nope")
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="scripted", messages=HELLO)


def test_revoked_and_rotated_keys_stop_working(engine_gateway: RunningGateway) -> None:
    settings = engine_gateway.settings

    async def make_and_revoke() -> tuple[str, str, str]:
        database = Database.from_settings(settings)
        try:
            accounts = AccountService(database)
            revoked = await accounts.create_key("revocation", name="to-revoke", tier="pro")
            await accounts.revoke_key(revoked.record.id)
            old = await accounts.create_key("revocation", name="to-rotate")
            new = await accounts.rotate_key(old.record.id)
        finally:
            await database.dispose()
        return revoked.key, old.key, new.key

    revoked_key, rotated_away, replacement = asyncio.run(make_and_revoke())
    for dead_key in (revoked_key, rotated_away):
        with pytest.raises(openai.AuthenticationError):
            engine_gateway.client(api_key=dead_key).chat.completions.create(
                model="scripted", messages=HELLO
            )
    ok = engine_gateway.client(api_key=replacement).chat.completions.create(
        model="scripted", messages=HELLO
    )
    assert ok.choices[0].message.content == "echo: hello"


def test_unknown_route_and_method(engine_gateway: RunningGateway) -> None:
    with engine_gateway.http() as http:
        assert_envelope(http.get("/v1/nothing-here"), 404, code="unknown_url")
        assert_envelope(http.get("/v1/chat/completions", headers=engine_gateway.auth()), 405)


def test_unknown_model_is_404_model_not_found(engine_gateway: RunningGateway) -> None:
    client = engine_gateway.client()
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        ({"model": "scripted"}, "messages"),
        ({"model": "scripted", "messages": []}, "messages"),
        ({"model": "scripted", "messages": "hello"}, "messages"),
        ({"model": 5, "messages": HELLO}, "model"),
        (
            {"model": "scripted", "messages": [{"role": "wizard", "content": "x"}]},
            "messages[0].role",
        ),
        ({"model": "scripted", "messages": HELLO, "max_tokens": -1}, "max_tokens"),
        ({"model": "scripted", "messages": HELLO, "max_tokens": 0}, "max_tokens"),
        ({"model": "scripted", "messages": HELLO, "max_tokens": 10**9}, "max_tokens"),
        (
            {"model": "scripted", "messages": HELLO, "max_completion_tokens": 9000},
            "max_completion_tokens",
        ),
        ({"model": "scripted", "messages": HELLO, "max_tokens": "many"}, "max_tokens"),
        ({"model": "scripted", "messages": HELLO, "temperature": 3}, "temperature"),
        ({"model": "scripted", "messages": HELLO, "temperature": -0.1}, "temperature"),
        ({"model": "scripted", "messages": HELLO, "top_p": 1.5}, "top_p"),
        ({"model": "scripted", "messages": HELLO, "presence_penalty": 9}, "presence_penalty"),
        ({"model": "scripted", "messages": HELLO, "n": 2}, "n"),
        ({"model": "scripted", "messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        (
            {"model": "scripted", "messages": HELLO, "stream_options": {"include_usage": True}},
            "stream_options",
        ),
        (
            {"model": "scripted", "messages": [{"role": "tool", "content": "x"}]},
            "messages[0].tool_call_id",
        ),
        ({"model": "scripted", "messages": HELLO, "tool_choice": "required"}, "tool_choice"),
    ],
)
def test_bad_input_is_a_clear_400(
    engine_gateway: RunningGateway, body: Any, param: str | None
) -> None:
    error = assert_envelope(post_chat(engine_gateway, body), 400)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


def test_tools_on_a_model_without_tools_is_400(engine_gateway: RunningGateway) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    body = {"model": "scripted-plain", "messages": HELLO, "tools": [tool]}
    assert_envelope(post_chat(engine_gateway, body), 400, code="tools_not_supported")


def image_message(url: str) -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("https://example.com/cat.png", "image_url_not_supported"),
        ("http://127.0.0.1:1/cat.png", "image_url_not_supported"),
        ("data:image/png;base64,!!!not-base64!!!", "invalid_image"),
        (
            "data:image/png;base64," + base64.b64encode(b"GIF89a-but-called-png").decode(),
            "invalid_image",
        ),
        ("data:text/plain;base64,aGVsbG8=", "invalid_image"),
        ("data:image/tiff;base64,aGVsbG8=", "invalid_image"),
        (
            "data:image/png;base64,"
            + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"0" * 70_000).decode(),
            "image_too_large",
        ),
    ],
)
def test_bad_images_are_refused_and_never_fetched(
    engine_gateway: RunningGateway, url: str, code: str
) -> None:
    error = assert_envelope(
        post_chat(engine_gateway, {"model": "scripted", "messages": image_message(url)}),
        400,
        code=code,
    )
    assert error["param"] == "messages[0].content[1].image_url"


def test_image_to_a_model_without_vision_is_400(engine_gateway: RunningGateway) -> None:
    body = {
        "model": "scripted-plain",
        "messages": image_message(f"data:image/png;base64,{PNG_1PX}"),
    }
    assert_envelope(post_chat(engine_gateway, body), 400, code="vision_not_supported")


def test_body_over_the_limit_is_413(engine_gateway: RunningGateway) -> None:
    huge = {"model": "scripted", "messages": [{"role": "user", "content": "x" * 300_000}]}
    assert_envelope(post_chat(engine_gateway, huge), 413, code="request_too_large")

    def chunked() -> Any:
        for _ in range(40):
            yield b"x" * 10_000

    with engine_gateway.http() as http:
        streamed = http.post(
            "/v1/chat/completions", content=chunked(), headers=engine_gateway.auth()
        )
    assert_envelope(streamed, 413, code="request_too_large")


def test_no_worker_for_the_model_is_503_with_retry_after(engine_gateway: RunningGateway) -> None:
    response = post_chat(engine_gateway, {"model": "orphan", "messages": HELLO})
    assert_envelope(response, 503, code="no_worker_available")
    assert int(response.headers["retry-after"]) >= 1
    client = engine_gateway.client()
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="orphan", messages=HELLO)
    assert caught.value.status_code == 503


def test_engine_failure_is_502_and_engine_rejection_is_400(engine_gateway: RunningGateway) -> None:
    failed = post_chat(engine_gateway, {"model": "scripted-broken", "messages": HELLO})
    error = assert_envelope(failed, 502, code="backend_error")
    assert "upstream-secret" not in failed.text
    assert error["type"] == "server_error"
    rejected = post_chat(engine_gateway, {"model": "scripted-rejects", "messages": HELLO})
    assert "scripted rejection" in assert_envelope(rejected, 400)["message"]


def test_engine_failure_in_a_stream_is_an_http_error_not_a_broken_stream(
    engine_gateway: RunningGateway,
) -> None:
    body = {"model": "scripted-broken", "messages": HELLO, "stream": True}
    assert_envelope(post_chat(engine_gateway, body), 502, code="backend_error")


def test_unknown_fields_are_accepted_and_ignored(engine_gateway: RunningGateway) -> None:
    body = {
        "model": "scripted",
        "messages": HELLO,
        "some_future_field": {"x": 1},
        "logprobs": False,
    }
    assert post_chat(engine_gateway, body).status_code == 200


def test_client_request_id_is_echoed(engine_gateway: RunningGateway) -> None:
    with engine_gateway.http() as http:
        response = http.get("/v1/models", headers={"x-request-id": "my-trace-123"})
        bogus = http.get("/v1/models", headers={"x-request-id": "bad id with spaces"})
    assert response.headers["x-request-id"] == "my-trace-123"
    assert bogus.headers["x-request-id"].startswith("req_")
