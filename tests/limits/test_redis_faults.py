"""When the Redis that keeps the rate limits is unreachable.

* ``infermesh serve`` with an unreachable Redis (option or environment) exits 1 at once
  with a clear message that does not print the URL's password.
* A running gateway whose Redis dies fails closed by default: 503
  ``rate_limiter_unavailable`` with ``Retry-After``, quickly, naming no host; nothing
  is dispatched or charged; it recovers by itself when Redis is back.
* With ``rate_limit_fail_open`` it lets requests through, warning once, not per request.
* A request admitted before Redis died finishes normally, its slot release failing
  quietly.

Each in-process gateway has a redis-server of its own, which the test stops and starts.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from infermesh.catalog.spec import ModelSpec
from tests.fakes.engine import ScriptedEngine, run_engine
from tests.gateway.conftest import engine_specs
from tests.support.gateway import RunningGateway, start_gateway
from tests.support.processes import infermesh
from tests.support.redis import PrivateRedis, private_redis, unique_prefix
from tests.support.servers import free_port
from tests.support.waiting import wait_until

SECRETS = {"SCRIPTED_ENGINE_KEY": "upstream-secret"}
METERED = "metered"
PER_REQUEST_MICRO_USD = 1000
LIMITER_LOGGER = "infermesh.limits.service"
STARTUP_FAILURE = "Cannot reach the Redis that keeps the rate limits"
PASSWORD = "hunter2-not-for-logs"


@pytest.fixture(scope="module")
def engine() -> Iterator[ScriptedEngine]:
    with run_engine(models=["scripted-1"], api_key="upstream-secret") as running:
        yield running


def _metered_model(engine_url: str) -> ModelSpec:
    """A model charged per request on the scripted engine, so a charge would show."""
    return ModelSpec.model_validate(
        {
            "id": METERED,
            "pricing": {"per_request": "0.001"},
            "serve": {
                "backend": "openai",
                "engine_model": "scripted-1",
                "upstream_url": engine_url,
                "upstream_key_env": "SCRIPTED_ENGINE_KEY",
            },
        }
    )


@contextmanager
def _gateway_on(
    server: PrivateRedis, data_dir: Path, engine: ScriptedEngine, **settings: Any
) -> Iterator[RunningGateway]:
    """An in-process gateway (key of tier "pro": limited) keeping its limits on ``server``."""
    with start_gateway(
        data_dir,
        specs=[*engine_specs(engine.base_url), _metered_model(engine.base_url)],
        secrets=SECRETS,
        wait_for=["scripted", METERED],
        redis_url=server.url,
        redis_prefix=unique_prefix(),
        redis_timeout=0.5,
        **settings,
    ) as gateway:
        yield gateway


def _ask(gateway: RunningGateway, content: str, model: str = "scripted") -> Any:
    return gateway.client(timeout=30).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}]
    )


def _works(gateway: RunningGateway) -> bool:
    try:
        _ask(gateway, "back?")
    except openai.InternalServerError:
        return False
    return True


def _limiter_warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == LIMITER_LOGGER
        and record.levelno == logging.WARNING
        and text in record.getMessage()
    ]


def _serve_without_redis(tmp_path: Path, *args: str, env: dict[str, str]) -> tuple[int, str, float]:
    """Run ``infermesh serve`` to its end; (exit code, output with whitespace joined, seconds)."""
    started = time.monotonic()
    finished = infermesh(
        "serve",
        "--data-dir",
        str(tmp_path / "data"),
        "--port",
        str(free_port()),
        *args,
        env={**os.environ, "COLUMNS": "300", "INFERMESH_DATABASE_URL": "", **env},
    )
    elapsed = time.monotonic() - started
    return finished.returncode, " ".join((finished.stdout + finished.stderr).split()), elapsed


def test_serve_exits_at_once_when_the_redis_option_is_unreachable(tmp_path: Path) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    code, output, elapsed = _serve_without_redis(tmp_path, "--redis-url", url, env={})
    assert code == 1, output
    assert elapsed < 30
    assert f"error: {STARTUP_FAILURE}" in output
    assert PASSWORD not in output
    assert "sk-im-" not in output  # it stopped before creating the first key


def test_serve_exits_at_once_when_the_redis_environment_is_unreachable(tmp_path: Path) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    code, output, elapsed = _serve_without_redis(tmp_path, env={"INFERMESH_REDIS_URL": url})
    assert code == 1, output
    assert elapsed < 30
    assert f"error: {STARTUP_FAILURE}" in output
    assert PASSWORD not in output


def test_a_dead_redis_fails_closed_and_the_gateway_recovers(
    engine: ScriptedEngine, tmp_path: Path
) -> None:
    with private_redis() as server, _gateway_on(server, tmp_path, engine) as gateway:
        paid = _ask(gateway, "while redis lives", model=METERED)
        assert paid.parse().choices[0].message.content == "echo: while redis lives"
        assert paid.headers["x-ratelimit-limit-requests"] == "600"
        with gateway.http() as http:
            balance_before = http.get("/v1/credits/balance", headers=gateway.auth()).json()
        sent_before = len(engine.requests)

        server.stop()
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as refused:
            _ask(gateway, "while redis is down", model=METERED)
        assert time.monotonic() - started < 5  # refused at once, not after a hang

        error = refused.value
        assert error.status_code == 503
        assert isinstance(error.body, dict)
        assert (error.body["type"], error.body["code"]) == (
            "service_unavailable",
            "rate_limiter_unavailable",
        )
        message = error.body["message"]
        assert "127.0.0.1" not in message
        assert str(server.port) not in message
        assert "redis://" not in message.lower()
        assert error.response.headers["retry-after"] == "1"
        assert len(engine.requests) == sent_before  # nothing was dispatched
        with gateway.http() as http:
            balance_after = http.get("/v1/credits/balance", headers=gateway.auth()).json()
        assert balance_after["balance"] == balance_before["balance"]  # nothing was charged
        assert balance_after["held"]["micro_usd"] == 0

        server.start()
        wait_until(lambda: _works(gateway), timeout=15, what="requests work once Redis is back")
        again = _ask(gateway, "after the restart")
        assert again.parse().choices[0].message.content == "echo: after the restart"
        assert "x-ratelimit-remaining-requests" in again.headers


def test_fail_open_lets_requests_through_and_warns_once(
    engine: ScriptedEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LIMITER_LOGGER)
    with (
        private_redis() as server,
        _gateway_on(server, tmp_path, engine, rate_limit_fail_open=True) as gateway,
    ):
        assert "x-ratelimit-limit-requests" in _ask(gateway, "limited").headers
        server.stop()
        sent_before = len(engine.requests)
        answers = [_ask(gateway, f"unlimited {turn}") for turn in range(5)]
        assert [answer.parse().choices[0].message.content for answer in answers] == [
            f"echo: unlimited {turn}" for turn in range(5)
        ]
        assert len(engine.requests) - sent_before == 5
        assert not any("x-ratelimit-limit-requests" in answer.headers for answer in answers)
    [warning] = _limiter_warnings(caplog, "rate limiter unavailable")
    assert "letting requests through" in warning.getMessage()


def test_a_stream_admitted_before_redis_died_finishes_normally(
    engine: ScriptedEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LIMITER_LOGGER)
    words = [f"w{index}" for index in range(15)]
    with private_redis() as server, _gateway_on(server, tmp_path, engine) as gateway:
        engine.chunk_delay = 0.1
        try:
            stream = gateway.client(timeout=30).chat.completions.create(
                model="scripted",
                messages=[{"role": "user", "content": " ".join(words)}],
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = iter(stream)
            received = [next(chunks)]
            while not (received[-1].choices and received[-1].choices[0].delta.content):
                received.append(next(chunks))  # up to the first word: admitted and running
        finally:
            engine.chunk_delay = 0.0  # this stream keeps its pace
        disconnects_before = engine.disconnects
        server.stop()
        received += list(chunks)

        text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
        assert text == "echo: " + " ".join(words)
        finishes = [c.choices[0].finish_reason for c in received if c.choices]
        assert finishes[-1] == "stop"
        usage = received[-1].usage
        assert usage is not None
        assert (usage.prompt_tokens, usage.completion_tokens) == (15, 16)
        assert engine.disconnects == disconnects_before
        wait_until(
            lambda: bool(_limiter_warnings(caplog, "could not count tokens or release a slot")),
            timeout=10,
            what="the failed slot release is logged as a warning",
        )
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
