"""Hostile edges of the gateway: forged log lines, admin-key guessing, deeply nested JSON."""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from infermesh.gateway.admin_lockout import AdminAttempts
from infermesh.protocol.chat import ChatCompletionRequest
from infermesh.protocol.generation import GenerationJob
from infermesh.protocol.json_depth import MAX_JSON_DEPTH
from infermesh.protocol.wire import Job, gateway_frames
from infermesh.telemetry import MAX_LOGGED_CHARS, RequestRecord, format_access_line
from tests.fakes.engine import ScriptedEngine
from tests.gateway.test_errors import assert_envelope
from tests.support.gateway import RunningGateway, start_gateway
from tests.support.waiting import wait_until

ADMIN_KEY = "admin-edges-secret-0123456789"
HELLO = [{"role": "user", "content": "hello"}]
FORGED_PATH = "/v1/models%0Afake%20status=200%0D%0Aagain%1B[31m%E2%80%A8end"
FORGED_DECODED = "/v1/models\nfake status=200\r\nagain\x1b[31m\u2028end"

# --- the access log ------------------------------------------------------------------


def access_lines(caplog: pytest.LogCaptureFixture, request_id: str) -> list[str]:
    messages = [r.getMessage() for r in caplog.records if r.name == "infermesh.access"]
    return [message for message in messages if request_id in message]


def logfmt(line: str) -> dict[str, str]:
    """The fields of a text access line (``key=value`` or ``key="quoted value"``)."""
    fields: dict[str, str] = {}
    for token in shlex.split(line):
        key, _, value = token.partition("=")
        assert key not in fields, f"field {key} appears twice in {line!r}"
        fields[key] = value
    return fields


@pytest.fixture(scope="module")
def text_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with start_gateway(tmp_path_factory.mktemp("text-log"), specs=[]) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def json_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with start_gateway(tmp_path_factory.mktemp("json-log"), specs=[], log_json=True) as gateway:
        yield gateway


def get(gateway: RunningGateway, path: str, **options: Any) -> httpx.Response:
    with gateway.http() as http:
        return http.get(path, headers=gateway.auth(), **options)


def test_a_newline_in_the_path_cannot_forge_a_text_access_line(
    text_gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="infermesh.access")
    response = get(text_gateway, FORGED_PATH)
    assert_envelope(response, 404)

    request_id = response.headers["x-request-id"]
    wait_until(lambda: bool(access_lines(caplog, request_id)), timeout=10, what="access line")
    [line] = access_lines(caplog, request_id)
    assert line.isprintable(), line
    fields = logfmt(line)
    assert fields["status"] == "404"
    assert fields["request_id"] == request_id
    assert fields["path"] == r"/v1/models\nfake status=200\r\nagain\x1b[31m\u2028end"
    assert "fake" not in fields["route"]


def test_the_json_access_line_stays_valid_json(
    json_gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="infermesh.access")
    response = get(json_gateway, FORGED_PATH)
    assert_envelope(response, 404)

    request_id = response.headers["x-request-id"]
    wait_until(lambda: bool(access_lines(caplog, request_id)), timeout=10, what="access line")
    [line] = access_lines(caplog, request_id)
    assert "\n" not in line and "\r" not in line and line.isascii()
    fields = json.loads(line)
    assert fields["path"] == FORGED_DECODED
    assert fields["status"] == 404


@pytest.mark.parametrize("gateway_name", ["text_gateway", "json_gateway"])
def test_a_long_path_is_cut_in_the_access_line(
    gateway_name: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    gateway: RunningGateway = request.getfixturevalue(gateway_name)
    caplog.set_level(logging.INFO, logger="infermesh.access")
    response = get(gateway, "/v1/" + "a" * 6000)
    assert_envelope(response, 404)

    request_id = response.headers["x-request-id"]
    wait_until(lambda: bool(access_lines(caplog, request_id)), timeout=10, what="access line")
    [line] = access_lines(caplog, request_id)
    fields: dict[str, Any] = json.loads(line) if line.startswith("{") else logfmt(line)
    assert fields["path"].startswith("/v1/aaaa")
    assert fields["path"].endswith("...")
    assert len(fields["path"]) <= MAX_LOGGED_CHARS + 3
    assert len(line) < 2 * MAX_LOGGED_CHARS + 500


def test_every_client_string_in_a_text_line_is_escaped() -> None:
    record = RequestRecord(
        request_id="req_1",
        method="GET\r\nX-Forged: 1",
        path='/a b"c\\d',
        status=400,
        model="m\tx",
        error_code="code=1",
    )
    line = format_access_line(record, as_json=False)
    assert line.isprintable()
    fields = logfmt(line)
    assert fields["method"] == r"GET\r\nX-Forged: 1"
    assert fields["path"] == '/a b"c\\d'
    assert fields["model"] == r"m\tx"
    assert fields["error_code"] == "code=1"
    assert fields["status"] == "400"
    assert json.loads(format_access_line(record, as_json=True))["method"] == record.method


# --- guessing the admin key ----------------------------------------------------------


def admin_get(gateway: RunningGateway, key: str | None, *, source: str = "127.0.0.1") -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=gateway.base_url, transport=transport, timeout=60) as http:
        return http.get("/admin/accounts/tester", headers=headers)


def test_failed_admin_attempts_lock_the_address_out(tmp_path: Path) -> None:
    with start_gateway(
        tmp_path, specs=[], admin_key=ADMIN_KEY, admin_lockout_failures=3, admin_lockout_window=600
    ) as gateway:
        for _ in range(5):  # successes do not count
            assert admin_get(gateway, ADMIN_KEY).status_code == 200
        for guess in ("guess-1", "guess-2", "guess-3"):
            assert_envelope(admin_get(gateway, guess), 401, code="invalid_admin_key")

        for key in (ADMIN_KEY, "guess-4", None):
            locked = admin_get(gateway, key)
            error = assert_envelope(locked, 429, code="too_many_admin_attempts")
            assert error["type"] == "requests"
            assert 1 <= int(locked.headers["retry-after"]) <= 600

        assert admin_get(gateway, ADMIN_KEY, source="127.0.0.2").status_code == 200
        with gateway.http() as http:  # the public API is not locked
            assert http.get("/v1/models", headers=gateway.auth()).status_code == 200


def test_the_lockout_ends_when_the_window_passes(tmp_path: Path) -> None:
    with start_gateway(
        tmp_path, specs=[], admin_key=ADMIN_KEY, admin_lockout_failures=2, admin_lockout_window=3.0
    ) as gateway:
        for guess in ("guess-1", "guess-2"):
            assert_envelope(admin_get(gateway, guess), 401)
        assert_envelope(admin_get(gateway, ADMIN_KEY), 429)
        wait_until(
            lambda: admin_get(gateway, ADMIN_KEY).status_code == 200,
            timeout=15,
            what="the lockout ends",
        )


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_admin_attempts_track_a_bounded_number_of_addresses() -> None:
    clock = ManualClock()
    attempts = AdminAttempts(limit=2, window=60, max_addresses=3, clock=clock)
    for index in range(10):
        attempts.failed(f"10.0.0.{index}")
        clock.now += 1
    assert len(attempts) == 3
    attempts.failed("10.0.0.9")
    retry_after = attempts.locked_for("10.0.0.9")
    assert retry_after is not None and 0 < retry_after <= 60
    assert attempts.locked_for("10.0.0.8") is None
    clock.now += 61
    assert attempts.locked_for("10.0.0.9") is None
    attempts.failed("10.0.0.100")
    assert len(attempts) == 1  # expired addresses are forgotten


# --- deeply nested JSON --------------------------------------------------------------


def nested(levels: int) -> dict[str, Any]:
    """A JSON schema about ``levels`` containers deep (each object level is two)."""
    value: dict[str, Any] = {"type": "string"}
    for _ in range((levels - 1) // 2):
        value = {"type": "object", "properties": {"x": value}}
    return value


def deep(levels: int) -> Any:
    """A JSON value ``levels`` containers deep."""
    value: Any = {}
    for index in range(levels - 1, 0, -1):  # an object outermost, then lists and objects
        value = {"a": value} if index % 2 else [value]
    return value


def chat_body(**fields: Any) -> dict[str, Any]:
    return {"model": "scripted", "messages": HELLO, "max_tokens": 5, **fields}


def post_chat(gateway: RunningGateway, body: dict[str, Any]) -> httpx.Response:
    with gateway.http() as http:
        return http.post("/v1/chat/completions", json=body, headers=gateway.auth())


def tool(parameters: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "f", "parameters": parameters}}


DEEP_FIELDS = [
    ({"tools": [tool(deep(150))]}, "tools[0].function.parameters"),
    (
        {"response_format": {"type": "json_schema", "json_schema": deep(150)}},
        "response_format.json_schema",
    ),
    ({"vendor_option": deep(150)}, "vendor_option"),
    (
        {"messages": [{"role": "user", "content": "hi", "annotations": deep(150)}]},
        "messages[0].annotations",
    ),
]


@pytest.mark.parametrize(("fields", "param"), DEEP_FIELDS, ids=[p for _, p in DEEP_FIELDS])
def test_deeply_nested_json_is_a_clear_400(
    engine_gateway: RunningGateway, engine: ScriptedEngine, fields: dict[str, Any], param: str
) -> None:
    sent_before = len(engine.requests)
    for stream in (False, True):
        response = post_chat(engine_gateway, chat_body(stream=stream, **fields))
        error = assert_envelope(response, 400, code="json_too_deep")
        assert error["param"] == param
        assert str(MAX_JSON_DEPTH) in error["message"]
    assert len(engine.requests) == sent_before


def test_deep_tool_parameters_through_the_openai_sdk(engine_gateway: RunningGateway) -> None:
    client = engine_gateway.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="scripted", messages=HELLO, tools=[tool(nested(150))], max_tokens=5
        )
    assert caught.value.param == "tools[0].function.parameters"
    assert caught.value.code == "json_too_deep"


def test_json_too_deep_for_the_parser_is_a_400(engine_gateway: RunningGateway) -> None:
    response = post_chat(engine_gateway, chat_body(tools=[tool(deep(400))]))
    assert_envelope(response, 400)


def test_nesting_within_the_bound_is_served(engine_gateway: RunningGateway) -> None:
    response = post_chat(
        engine_gateway,
        chat_body(tools=[tool(nested(MAX_JSON_DEPTH))], tool_choice="none", top_k=3),
    )
    assert response.status_code == 200, response.text


def test_a_request_within_the_bound_makes_a_job_frame_the_worker_parses() -> None:
    limit = deep(MAX_JSON_DEPTH)
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "x", "meta": limit}}],
                }
            ],
            "tools": [tool(limit)],
            "response_format": {"type": "json_schema", "json_schema": limit},
            "vendor_option": limit,
        }
    )
    frame = Job(job=GenerationJob(id="job-1", model="m", request=request))
    parsed = gateway_frames.validate_json(frame.model_dump_json())
    assert isinstance(parsed, Job)
    assert parsed.job.request == request


def test_extras_off_the_allow_list_never_reach_the_engine(
    engine_gateway: RunningGateway, engine: ScriptedEngine
) -> None:
    client = engine_gateway.client()
    client.chat.completions.create(
        model="scripted",
        messages=HELLO,
        max_tokens=5,
        extra_body={
            "top_k": 5,
            "chat_template": "{{ 'pwned' }}",
            "chat_template_kwargs": {"enable_thinking": True},
            "priority": -100,
        },
    )
    sent = engine.requests[-1]
    assert sent["top_k"] == 5
    assert not {"chat_template", "chat_template_kwargs", "priority"} & set(sent)
