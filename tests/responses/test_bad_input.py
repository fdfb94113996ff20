"""``POST /v1/responses`` with bad input and failing engines: always OpenAI's error
envelope with the right status and an ``x-request-id``, a stream that fails midway ends
with ``response.failed``, and no mutation of a valid body is answered with a 5xx."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from infermesh.catalog.spec import ModelSpec, ServeSpec
from tests.fakes.engine import ScriptedEngine, run_engine
from tests.responses.conftest import ENGINE_KEY, scripted_specs
from tests.support.fuzz import mutated
from tests.support.gateway import RunningGateway, start_gateway

SLOW_KEY = "slow-secret"
TOOL = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}


def engine_spec(model_id: str, engine_model: str, url: str, key_env: str) -> ModelSpec:
    serve = ServeSpec(
        backend="openai", engine_model=engine_model, upstream_url=url, upstream_key_env=key_env
    )
    return ModelSpec(id=model_id, tier="frontier", context_length=4096, serve=serve)


@pytest.fixture(scope="module")
def slow_engine() -> Iterator[ScriptedEngine]:
    """1.5 seconds between tokens: longer than the gateway lets a worker go silent."""
    with run_engine(models=["scripted-1"], api_key=SLOW_KEY, chunk_delay=1.5) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(
    engine: ScriptedEngine,
    slow_engine: ScriptedEngine,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningGateway]:
    specs = [
        *scripted_specs(engine.base_url),
        engine_spec("scripted-broken", "fail-500", engine.base_url, "SCRIPTED_ENGINE_KEY"),
        engine_spec("scripted-slow", "scripted-1", slow_engine.base_url, "SLOW_ENGINE_KEY"),
    ]
    with start_gateway(
        tmp_path_factory.mktemp("responses-errors"),
        specs=specs,
        secrets={"SCRIPTED_ENGINE_KEY": ENGINE_KEY, "SLOW_ENGINE_KEY": SLOW_KEY},
        wait_for=["scripted", "scripted-broken", "scripted-slow"],
        chunk_timeout=1.0,
        max_attempts=1,
    ) as running:
        yield running


def post(gateway: RunningGateway, body: Any, *, key: str | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key or gateway.key}", "content-type": "application/json"}
    with gateway.http() as http:
        return http.post("/v1/responses", content=content, headers=headers)


def envelope(response: httpx.Response, status: int) -> dict[str, Any]:
    """The error of ``response``, checked: its status, the envelope, the request id."""
    assert response.status_code == status, response.text
    assert response.headers["x-request-id"]
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "scripted", "input": 5}, "input"),
        ({"model": "scripted"}, "input"),
        ({"input": "hi"}, "model"),
        ({"model": "scripted", "input": "hi", "temperature": "hot"}, "temperature"),
        ({"model": "scripted", "input": "hi", "temperature": 3}, "temperature"),
        ({"model": "scripted", "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "scripted", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"model": "scripted", "input": [{"type": "function_call"}]}, "input[0].call_id"),
        ({"model": "scripted", "input": "hi", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"model": "scripted", "input": "hi", "metadata": {"k": 1}}, "metadata.k"),
        ({"model": "scripted", "input": "hi", "stream": {"on": 1}}, "stream"),
        ({"model": "scripted", "input": "hi", "seed": "x"}, "seed"),
    ],
)
def test_wrong_types_are_400_naming_the_field(
    gateway: RunningGateway, body: dict[str, Any], param: str
) -> None:
    error = envelope(post(gateway, body), 400)
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


def test_bad_json_is_400(gateway: RunningGateway) -> None:
    assert envelope(post(gateway, b'{"model": "scripted", "input": '), 400)["code"] == (
        "invalid_json"
    )


def test_unknown_model_is_404(gateway: RunningGateway) -> None:
    error = envelope(post(gateway, {"model": "nope", "input": "hi"}), 404)
    assert (error["code"], error["param"]) == ("model_not_found", "model")


def test_a_bad_key_is_401(gateway: RunningGateway) -> None:
    error = envelope(post(gateway, {"model": "scripted", "input": "hi"}, key="sk-wrong"), 401)
    assert error["type"] == "authentication_error"
    with gateway.http() as http:
        missing = http.post("/v1/responses", json={"model": "scripted", "input": "hi"})
    assert envelope(missing, 401)["code"] == "missing_api_key"


def test_previous_response_id_is_refused_with_what_to_do(gateway: RunningGateway) -> None:
    client = gateway.client()
    first = client.responses.create(model="scripted", input="hi")
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="scripted", input="again", previous_response_id=first.id)
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict)
    assert (body["param"], body["code"]) == ("previous_response_id", "unsupported_parameter")
    assert "whole conversation" in body["message"]
    assert caught.value.response.headers["x-request-id"]


def test_hosted_tools_are_refused_by_the_sdk_call(gateway: RunningGateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().responses.create(
            model="scripted", input="hi", tools=[{"type": "web_search"}]
        )
    assert caught.value.body["param"] == "tools[0].type"  # type: ignore[index]


def test_chat_checks_name_the_responses_fields(gateway: RunningGateway) -> None:
    too_long = envelope(
        post(gateway, {"model": "scripted", "input": "hi", "max_output_tokens": 9000}), 400
    )
    assert too_long["param"] == "max_output_tokens" and "max_output_tokens" in too_long["message"]
    image = {"type": "input_image", "image_url": "https://example.test/cat.png"}
    body = {
        "model": "scripted-plain",
        "instructions": "x",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "see"}, image]}],
    }
    no_vision = envelope(post(gateway, body), 400)
    assert no_vision["param"] == "input[0].content[1].image_url"
    tools = {"model": "scripted-plain", "input": "hi", "tools": [TOOL]}
    assert envelope(post(gateway, tools), 400)["code"] == "tools_not_supported"


def test_an_engine_failure_before_the_stream_is_an_http_error(gateway: RunningGateway) -> None:
    for stream in (False, True):
        body = {"model": "scripted-broken", "input": "hi", "stream": stream}
        assert envelope(post(gateway, body), 502)["type"] == "server_error"


def test_a_stream_that_fails_midway_ends_with_response_failed(gateway: RunningGateway) -> None:
    events = list(
        gateway.client().responses.create(model="scripted-slow", input="a b c", stream=True)
    )
    assert [event.type for event in events[:2]] == ["response.created", "response.in_progress"]
    failed = events[-1]
    assert failed.type == "response.failed"
    assert failed.response.status == "failed"
    assert failed.response.error is not None and failed.response.error.code == "server_error"
    assert failed.response.output[0].content[0].text == "echo:"
    assert [event.sequence_number for event in events] == list(range(len(events)))


# --- fuzz ----------------------------------------------------------------------------

VALID_BODIES: list[dict[str, Any]] = [
    {"model": "scripted", "input": "hello"},
    {
        "model": "scripted",
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ],
        "tools": [TOOL],
        "tool_choice": "auto",
        "text": {"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}}},
        "max_output_tokens": 20,
        "metadata": {"a": "b"},
    },
    {"model": "scripted", "input": "stream me", "stream": True, "temperature": 0.2},
]
ODD_VALUES: list[Any] = [
    "function",
    "message",
    "input_text",
    {"type": "function"},
    {"type": "message"},
]
"""Values that are valid somewhere in a Responses body, besides fuzz's own odd ones."""
EXTRA_KEYS = ["previous_response_id", "store", "reasoning", "include", "background", "extra"]


def test_mutated_bodies_never_get_a_server_error(gateway: RunningGateway) -> None:
    rng = random.Random(20261130)
    statuses: dict[int, int] = {}
    headers = {**gateway.auth(), "content-type": "application/json"}
    with gateway.http() as http:
        for _ in range(200):
            body = mutated(rng, rng.choice(VALID_BODIES), ODD_VALUES, extra_keys=EXTRA_KEYS)
            content = json.dumps(body).encode()
            with http.stream("POST", "/v1/responses", content=content, headers=headers) as answer:
                text = answer.read().decode()
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
            assert answer.status_code < 500, (body, text)
            assert answer.headers["x-request-id"]
            if answer.status_code >= 400:
                assert set(json.loads(text)["error"]) == {"message", "type", "param", "code"}
            elif answer.headers["content-type"].startswith("text/event-stream"):
                assert "event: response.completed" in text or "event: response.incomplete" in text
    assert statuses.get(200, 0) >= 20 and statuses.get(400, 0) >= 20, statuses
