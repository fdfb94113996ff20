"""Rate limits over real HTTP on one gateway, each at its exact boundary.

Requests per minute (and the SDK's own retry on ``retry-after-ms``), tokens per day and
per minute (the budget drawn up front, the real usage counted after), concurrency
(streams held open, slots given back however a request ends, on the in-process store
and on Redis), a key's own limits narrowing its account's, ``"unlimited"``, and the
``x-ratelimit-*`` headers on errors after admission. The gateway's tiers are this
module's own (``INFERMESH_TIER_LIMITS``); each test uses an account of its own.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
import redis
from openai import OpenAI

from infermesh.catalog.spec import ModelSpec
from tests.fakes.engine import ScriptedEngine, run_engine
from tests.gateway.conftest import ENGINE_MODELS, engine_specs
from tests.gateway.test_billing import GRANT, PER_TOKEN, SECRETS, Customer, priced, token_cost
from tests.support.gateway import RunningGateway, create_key, start_gateway
from tests.support.redis import keys_with_prefix, redis_url, require_redis, unique_prefix
from tests.support.waiting import wait_until

ADMIN_KEY = "adm-secret"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
TIER_LIMITS: dict[str, dict[str, Any]] = {
    "rl-rpm": {"requests_per_minute": 3},
    "rl-retry": {"requests_per_minute": 60},
    "rl-tpd": {"tokens_per_day": 60},
    "rl-tpm": {"tokens_per_minute": 10},
    "rl-concurrency": {"concurrent_requests": 2},
    "rl-leak": {"concurrent_requests": 3},
    "rl-keys": {"requests_per_minute": 4},
    "rl-errors": {
        "requests_per_minute": 100,
        "tokens_per_minute": 100_000,
        "concurrent_requests": 1,
    },
    # Over the built-in defaults (60 rpm, 200,000 tpm, 5,000,000 tpd, 8 at once).
    "standard": {"requests_per_minute": "unlimited", "tokens_per_day": "unlimited"},
}
TIER_ACCESS = {
    "free": ["fast"],
    "standard": ["fast", "frontier"],
    "pro": ["*"],
    **{tier: ["*"] for tier in TIER_LIMITS if tier.startswith("rl-")},
}
GATEWAY_SETTINGS: dict[str, Any] = {
    "tier_limits": TIER_LIMITS,
    "tier_access": TIER_ACCESS,
    "admin_key": ADMIN_KEY,
    # Longer than any deadline here, so an expiring slot cannot hide a leaked one.
    "limit_slot_ttl": 120.0,
}
CHUNK_DELAY = 0.1
RATE_HEADER = re.compile(r"^x-ratelimit-")


def served(model_id: str, engine_url: str) -> ModelSpec:
    """A free model on the scripted engine at ``engine_url``."""
    serve = {
        "backend": "openai",
        "engine_model": "scripted-1",
        "upstream_url": engine_url,
        "upstream_key_env": "SCRIPTED_ENGINE_KEY",
    }
    return ModelSpec.model_validate({"id": model_id, "context_length": 8192, "serve": serve})


@pytest.fixture(scope="module")
def slow_engine() -> Iterator[ScriptedEngine]:
    with run_engine(
        models=["scripted-1"], api_key="upstream-secret", chunk_delay=CHUNK_DELAY
    ) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(
    engine: ScriptedEngine, slow_engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    specs = [
        *engine_specs(engine.base_url),
        priced("metered", PER_TOKEN, engine.base_url),
        served("slow", slow_engine.base_url),
    ]
    with start_gateway(
        tmp_path_factory.mktemp("rate-limits"),
        specs=specs,
        secrets=SECRETS,
        wait_for=[*ENGINE_MODELS, "metered", "slow"],
        **GATEWAY_SETTINGS,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def redis_gateway(
    slow_engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    require_redis()
    with start_gateway(
        tmp_path_factory.mktemp("rate-limits-redis"),
        specs=[served("slow", slow_engine.base_url)],
        secrets=SECRETS,
        wait_for=["slow"],
        redis_url=redis_url(),
        redis_prefix=unique_prefix(),
        **GATEWAY_SETTINGS,
    ) as running:
        yield running


# --- helpers -------------------------------------------------------------------------


def words(count: int, start: int = 0) -> str:
    """``count`` words of three characters (``w00 w01 …``): a prompt whose estimate,
    ceil(characters / 4), equals its word count, which is what the engine counts."""
    return " ".join(f"w{index % 100:02d}" for index in range(start, start + count))


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def limits_of(customer: Customer) -> dict[str, Any]:
    body: dict[str, Any] = customer.json("/v1/limits")
    return body


def in_use(customer: Customer) -> int:
    used: int = limits_of(customer)["account_limits"]["concurrent_requests"]["in_use"]
    return used


def rate_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in headers.items() if RATE_HEADER.match(name)}


def seconds(duration: str) -> float:
    """An OpenAI duration (``17ms``, ``59.916s``, ``6m0s``, ``1h2m3s``) in seconds."""
    if duration.endswith("ms"):
        return float(duration[:-2]) / 1000
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:([\d.]+)s)?", duration)
    assert match is not None and duration, duration
    hours, minutes, secs = (float(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + secs


def sent_since(engine: ScriptedEngine, before: int) -> list[str]:
    """The last user message of each body the engine received since ``before``."""
    return [body["messages"][-1]["content"] for body in engine.requests[before:]]


def recording_client(customer: Customer, statuses: list[int], **options: Any) -> OpenAI:
    """An SDK client of ``customer`` that notes the status of every HTTP response."""

    def note(response: httpx.Response) -> None:
        statuses.append(response.status_code)

    http = httpx.Client(timeout=60, event_hooks={"response": [note]})
    return customer.gateway.client(api_key=customer.key, http_client=http, **options)


def admin_patch(gateway: RunningGateway, path: str, body: dict[str, Any]) -> dict[str, Any]:
    with gateway.http() as http:
        response = http.patch(path, json=body, headers=ADMIN)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def assert_refused(error: openai.APIStatusError, *, error_type: str, param: str) -> dict[str, Any]:
    """A 429 in OpenAI's envelope, with Retry-After and retry-after-ms that agree."""
    assert error.status_code == 429
    body = error.response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == error_type
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert body["error"]["param"] == param
    headers = error.response.headers
    assert headers["x-request-id"]
    exact_ms = int(headers["retry-after-ms"])
    assert int(headers["retry-after"]) == max(1, math.ceil(exact_ms / 1000))
    details: dict[str, Any] = body["error"]
    return details


# --- requests per minute -------------------------------------------------------------


def test_requests_per_minute_admit_three_then_refuse_the_fourth(
    gateway: RunningGateway, engine: ScriptedEngine
) -> None:
    customer = Customer.create(gateway, tier="rl-rpm")
    client = customer.client()
    before = len(engine.requests)
    costs = []
    for index, remaining in enumerate((2, 1, 0)):
        raw = client.chat.completions.with_raw_response.create(
            model="metered", messages=user(f"call {index}")
        )
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        assert raw.headers["x-ratelimit-remaining-requests"] == str(remaining)
        assert 20 * (3 - remaining) - 2 < seconds(raw.headers["x-ratelimit-reset-requests"])
        assert seconds(raw.headers["x-ratelimit-reset-requests"]) <= 20 * (3 - remaining)
        # Only requests per minute are limited in this tier.
        assert set(rate_headers(raw.headers)) == {
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        }
        usage = raw.parse().usage
        assert usage is not None
        costs.append(token_cost(usage.prompt_tokens, usage.completion_tokens))

    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="metered", messages=user("call 3"))
    error = assert_refused(caught.value, error_type="requests", param="requests_per_minute")
    assert f"account '{customer.name}'" in error["message"]
    assert "limit 3" in error["message"]
    headers = caught.value.response.headers
    # Three requests drew the whole minute: the next fits 20 s after the first.
    assert headers["retry-after"] in {"19", "20"}
    assert 18_000 < int(headers["retry-after-ms"]) <= 20_000
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert 55 < seconds(headers["x-ratelimit-reset-requests"]) <= 60

    stream_body = {"model": "metered", "messages": user("call 4"), "stream": True}
    with (
        gateway.http() as http,
        http.stream(
            "POST", "/v1/chat/completions", json=stream_body, headers=customer.auth()
        ) as response,
    ):
        assert response.status_code == 429
        assert response.headers["content-type"].startswith("application/json")
        text = response.read().decode()
    assert "data:" not in text
    assert json.loads(text)["error"]["param"] == "requests_per_minute"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="metered", messages=user("call 5"), stream=True)

    assert sent_since(engine, before) == ["call 0", "call 1", "call 2"]
    records = customer.records()
    assert len(records) == 3
    assert {record["status"] for record in records} == {"succeeded"}
    assert customer.balance() == (GRANT - sum(costs), 0)


def test_the_sdk_retry_waits_for_retry_after_ms_and_then_succeeds(
    gateway: RunningGateway,
) -> None:
    customer = Customer.create(gateway, tier="rl-retry")
    client = customer.client()

    def tick() -> bool:
        try:
            client.chat.completions.create(model="scripted", messages=user("tick"))
        except openai.RateLimitError as exc:
            assert 0 < int(exc.response.headers["retry-after-ms"]) <= 1000  # one a second
            return False
        return True

    admitted = 0
    while tick():
        admitted += 1
        assert admitted < 80, "80 requests in a row passed a limit of 60 per minute"
    assert admitted >= 60
    # The next request a second comes back; just after one is let in, the wait is ~1 s.
    wait_until(tick, timeout=3, what="the request that comes back each second")

    statuses: list[int] = []
    with recording_client(customer, statuses, max_retries=2) as retrying:
        started = time.monotonic()
        completion = retrying.chat.completions.create(model="scripted", messages=user("again"))
        took = time.monotonic() - started
    assert completion.choices[0].message.content == "echo: again"
    assert statuses[0] == 429 and statuses[-1] == 200, statuses
    assert took >= 0.5, f"the SDK retried after {took:.3f}s instead of waiting"


# --- tokens ---------------------------------------------------------------------------


def test_tokens_per_day_are_drawn_up_front_and_counted_as_used(
    gateway: RunningGateway, engine: ScriptedEngine
) -> None:
    customer = Customer.create(gateway, tier="rl-tpd")
    client = customer.client()
    before = len(engine.requests)

    def day_left() -> int:
        remaining: int = limits_of(customer)["account_limits"]["tokens_per_day"]["remaining"]
        return remaining

    # Budget 4 + 10 = 14; used 4 prompt + 5 ("echo:" and four words) = 9.
    raw = client.chat.completions.with_raw_response.create(
        model="scripted", messages=user(words(4)), max_tokens=10
    )
    assert raw.headers["x-ratelimit-limit-tokens-day"] == "60"
    assert raw.headers["x-ratelimit-remaining-tokens-day"] == "46"
    assert set(rate_headers(raw.headers)) == {
        "x-ratelimit-limit-tokens-day",
        "x-ratelimit-remaining-tokens-day",
        "x-ratelimit-reset-tokens-day",
    }
    usage = raw.parse().usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (4, 5)
    assert day_left() == 51

    # Budget 20 + 40 = 60 > 51: refused before anything runs.
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="scripted", messages=user(words(20)), max_tokens=40)
    error = assert_refused(caught.value, error_type="tokens", param="tokens_per_day")
    assert "remaining 51, requested 60" in error["message"]
    assert caught.value.response.headers["x-ratelimit-remaining-tokens-day"] == "51"
    assert int(caught.value.response.headers["retry-after"]) > 3600  # 9 tokens at 24 min each

    # More than the whole day: no wait would cure it, so 400 rather than 429.
    with pytest.raises(openai.BadRequestError) as too_big:
        client.chat.completions.create(model="scripted", messages=user(words(1)), max_tokens=60)
    assert too_big.value.code == "request_exceeds_rate_limit"
    assert too_big.value.param == "max_tokens"
    assert too_big.value.type == "invalid_request_error"
    assert day_left() == 51

    # Budget 26 + 25 = 51 fits exactly; the answer is cut at 25 tokens, so it uses 51.
    raw = client.chat.completions.with_raw_response.create(
        model="scripted", messages=user(words(26)), max_tokens=25
    )
    assert raw.headers["x-ratelimit-remaining-tokens-day"] == "0"
    completion = raw.parse()
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.total_tokens == 51
    assert day_left() == 0

    with pytest.raises(openai.RateLimitError) as spent:
        client.chat.completions.create(model="scripted", messages=user(words(1)), max_tokens=1)
    assert_refused(spent.value, error_type="tokens", param="tokens_per_day")
    assert sent_since(engine, before) == [words(4), words(26)]


def test_tokens_per_minute_count_the_budget_then_the_real_usage(
    gateway: RunningGateway, engine: ScriptedEngine, slow_engine: ScriptedEngine
) -> None:
    """10 tokens a minute come back one every 6 s; the test ends well before that."""
    customer = Customer.create(gateway, tier="rl-tpm")
    client = customer.client()
    before, before_slow = len(engine.requests), len(slow_engine.requests)

    def minute_left() -> int:
        remaining: int = limits_of(customer)["account_limits"]["tokens_per_minute"]["remaining"]
        return remaining

    started = time.monotonic()
    # Budget 2 + 4 = 6; used 2 + 3 = 5.
    raw = client.chat.completions.with_raw_response.create(
        model="scripted", messages=user(words(2)), max_tokens=4
    )
    assert raw.headers["x-ratelimit-limit-tokens"] == "10"
    assert raw.headers["x-ratelimit-remaining-tokens"] == "4"
    assert 35 < seconds(raw.headers["x-ratelimit-reset-tokens"]) <= 36
    assert minute_left() == 5

    with pytest.raises(openai.RateLimitError) as caught:  # budget 3 + 3 = 6 > 5
        client.chat.completions.create(model="scripted", messages=user(words(3)), max_tokens=3)
    error = assert_refused(caught.value, error_type="tokens", param="tokens_per_minute")
    assert "remaining 5, requested 6" in error["message"]
    assert 5_000 < int(caught.value.response.headers["retry-after-ms"]) <= 6_000
    assert caught.value.response.headers["retry-after"] == "6"

    # A stream with budget 1 + 4 = 5 fits exactly; it uses 1 + 2 ("echo: w00") = 3.
    raw_stream = client.chat.completions.with_raw_response.create(
        model="slow", messages=user(words(1)), max_tokens=4, stream=True
    )
    assert raw_stream.headers["x-ratelimit-remaining-tokens"] == "0"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in raw_stream.parse())
    assert text == "echo: w00"
    wait_until(lambda: minute_left() == 2, timeout=10, what="the stream's real usage counted")

    with pytest.raises(openai.RateLimitError):  # budget 1 + 2 = 3 > 2
        client.chat.completions.create(model="scripted", messages=user(words(1)), max_tokens=2)
    raw = client.chat.completions.with_raw_response.create(  # budget 1 + 1 = 2, uses 2
        model="scripted", messages=user(words(1)), max_tokens=1
    )
    assert raw.headers["x-ratelimit-remaining-tokens"] == "0"
    assert minute_left() == 0
    elapsed = time.monotonic() - started
    assert elapsed < 6, f"the test took {elapsed:.1f}s, long enough for a token to come back"
    assert sent_since(engine, before) == [words(2), words(1)]
    assert sent_since(slow_engine, before_slow) == [words(1)]


# --- concurrency ---------------------------------------------------------------------


def test_concurrent_requests_refuse_a_third_until_a_stream_ends(
    gateway: RunningGateway, slow_engine: ScriptedEngine
) -> None:
    customer = Customer.create(gateway, tier="rl-concurrency")
    client = customer.client()
    first = client.chat.completions.create(model="slow", messages=user(words(40)), stream=True)
    second = client.chat.completions.create(model="slow", messages=user(words(40)), stream=True)
    first_chunks, second_chunks = iter(first), iter(second)
    next(first_chunks)
    next(second_chunks)
    assert in_use(customer) == 2
    sent = len(slow_engine.requests)

    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="slow", messages=user("third"), max_tokens=1)
    error = assert_refused(caught.value, error_type="requests", param="concurrent_requests")
    assert "the limit is 2 in flight" in error["message"]
    headers = caught.value.response.headers
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("1", "1000")
    assert headers["x-ratelimit-limit-concurrency"] == "2"
    assert headers["x-ratelimit-remaining-concurrency"] == "0"
    assert len(slow_engine.requests) == sent

    first.close()

    def third_admitted() -> bool:
        try:
            client.chat.completions.create(model="slow", messages=user("third"), max_tokens=1)
        except openai.RateLimitError:
            return False
        return True

    wait_until(third_admitted, timeout=15, what="a third request once a stream was closed")

    # Both slots full again, until the short stream ends by itself (about a second).
    short = client.chat.completions.create(
        model="slow", messages=user(words(8)), max_tokens=8, stream=True
    )
    statuses: list[int] = []
    with recording_client(customer, statuses, max_retries=3) as retrying:
        completion = retrying.chat.completions.create(
            model="slow", messages=user("patient"), max_tokens=1
        )
    assert completion.choices[0].message.content == "echo:"
    assert statuses[0] == 429 and statuses[-1] == 200, statuses
    second.close()
    short.close()
    wait_until(lambda: in_use(customer) == 0, timeout=15, what="every slot given back")


def _attempt(start: Callable[[], Any]) -> bool:
    """Run one request (True), or see it refused with a 429 (False)."""
    try:
        start()
    except openai.RateLimitError:
        return False
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code != 429:
            raise
        return False
    return True


def _until_admitted(start: Callable[[], Any], *, timeout: float = 30) -> None:
    """Retry ``start`` on 429 (a poll, with a deadline) until the gateway lets it in."""
    deadline = time.monotonic() + timeout
    while not _attempt(start):
        if time.monotonic() > deadline:
            raise AssertionError(f"not admitted within {timeout}s")
        time.sleep(0.05)


def _cancel_plans(gateway: RunningGateway, key: str) -> list[Callable[[], Any]]:
    """Ways for a request to end early (or not), each a call that returns when the
    client is done with it."""
    client = gateway.client(api_key=key)
    auth = {"Authorization": f"Bearer {key}"}
    long_prompt = user(words(30))

    def sdk_stream(chunks: int | None) -> Callable[[], Any]:
        def run() -> None:
            stream = client.chat.completions.create(model="slow", messages=long_prompt, stream=True)
            iterator = iter(stream)
            for _ in range(chunks or 0):
                next(iterator)
            stream.close()

        return run

    def http_stream(lines: int) -> Callable[[], Any]:
        def run() -> None:
            body = {"model": "slow", "messages": long_prompt, "stream": True}
            with (
                httpx.Client(base_url=gateway.base_url, timeout=30) as http,
                http.stream("POST", "/v1/chat/completions", json=body, headers=auth) as response,
            ):
                response.raise_for_status()
                seen = 0
                for line in response.iter_lines():
                    seen += line.startswith("data: ")
                    if seen >= lines:
                        break

        return run

    def finished_stream() -> None:
        stream = client.chat.completions.create(
            model="slow", messages=long_prompt, max_tokens=2, stream=True
        )
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == "echo: w00"

    def timed_out() -> None:
        body = {"model": "slow", "messages": long_prompt}
        with httpx.Client(base_url=gateway.base_url, timeout=0.4) as http:
            try:
                response = http.post("/v1/chat/completions", json=body, headers=auth)
            except httpx.ReadTimeout:
                return
        response.raise_for_status()
        raise AssertionError("a 3 s answer came back within the 0.4 s timeout")

    def finished() -> None:
        answer = client.chat.completions.create(model="slow", messages=long_prompt, max_tokens=1)
        assert answer.choices[0].message.content == "echo:"

    plans: list[Callable[[], Any]] = [
        sdk_stream(None),  # closed before reading a byte
        sdk_stream(1),
        sdk_stream(3),
        http_stream(1),
        http_stream(4),
        finished_stream,
        timed_out,
        sdk_stream(2),
        finished,
        http_stream(2),
    ]
    return [plans[index % len(plans)] for index in range(40)]


def _held_streams(client: OpenAI, count: int) -> list[Any]:
    streams = [
        client.chat.completions.create(model="slow", messages=user(words(30)), stream=True)
        for _ in range(count)
    ]
    for stream in streams:
        next(iter(stream))
    return streams


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_no_slot_leaks_however_requests_end(store: str, request: pytest.FixtureRequest) -> None:
    fixture = "gateway" if store == "memory" else "redis_gateway"
    gateway: RunningGateway = request.getfixturevalue(fixture)
    customer = Customer.create(gateway, tier="rl-leak")
    plans = _cancel_plans(gateway, customer.key)
    with ThreadPoolExecutor(max_workers=4) as pool:
        for done in [pool.submit(_until_admitted, plan) for plan in plans]:
            done.result()

    wait_until(lambda: in_use(customer) == 0, timeout=30, what="every slot given back")
    client = customer.client()
    streams = _held_streams(client, 3)
    assert in_use(customer) == 3
    if store == "redis":
        prefix = gateway.settings.redis_prefix
        pools = [k for k, kind in keys_with_prefix(prefix).items() if kind == "zset"]
        assert len(pools) == 1 and pools[0].endswith(":concurrent"), pools
        assert _zcard(pools[0]) == 3
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="slow", messages=user("fourth"), max_tokens=1)
    assert_refused(caught.value, error_type="requests", param="concurrent_requests")
    for stream in streams:
        stream.close()
    wait_until(lambda: in_use(customer) == 0, timeout=30, what="the last three slots back")
    if store == "redis":
        prefix = gateway.settings.redis_prefix
        pools = [k for k, kind in keys_with_prefix(prefix).items() if kind == "zset"]
        assert all(_zcard(key) == 0 for key in pools), pools


def _zcard(key: str) -> int:
    client = redis.Redis.from_url(redis_url(), decode_responses=True)
    try:
        return int(client.zcard(key))
    finally:
        client.close()


# --- keys and accounts ---------------------------------------------------------------


def test_a_keys_own_limit_narrows_its_account(gateway: RunningGateway) -> None:
    customer = Customer.create(gateway, tier="rl-keys")  # 4 a minute for the account
    other_key = _another_key(gateway, customer.name)
    key_id = limits_of(customer)["key_id"]
    changed = admin_patch(gateway, f"/admin/keys/{key_id}/limits", {"requests_per_minute": 2})
    assert changed["limits"]["requests_per_minute"]["limit"] == 2
    client, other = customer.client(), gateway.client(api_key=other_key)

    shown = []
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="scripted", messages=user("mine")
        )
        shown.append(
            (
                raw.headers["x-ratelimit-limit-requests"],
                raw.headers["x-ratelimit-remaining-requests"],
            )
        )
    assert shown == [("2", "1"), ("2", "0")]  # the key's limit, tighter than the account's
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="scripted", messages=user("mine"))
    error = assert_refused(caught.value, error_type="requests", param="requests_per_minute")
    assert "this API key" in error["message"]
    assert customer.name not in error["message"]

    raw = other.chat.completions.with_raw_response.create(model="scripted", messages=user("ours"))
    assert raw.headers["x-ratelimit-limit-requests"] == "4"
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    other.chat.completions.create(model="scripted", messages=user("ours"))
    with pytest.raises(openai.RateLimitError) as account_refusal:
        other.chat.completions.create(model="scripted", messages=user("ours"))
    error = assert_refused(
        account_refusal.value, error_type="requests", param="requests_per_minute"
    )
    assert f"account '{customer.name}'" in error["message"]


def test_keys_of_one_account_share_its_limit(gateway: RunningGateway) -> None:
    customer = Customer.create(gateway, tier="rl-keys")
    clients = [customer.client(), gateway.client(api_key=_another_key(gateway, customer.name))]
    remaining = []
    for client in (*clients, *clients):
        raw = client.chat.completions.with_raw_response.create(
            model="scripted", messages=user("shared")
        )
        remaining.append(raw.headers["x-ratelimit-remaining-requests"])
    assert remaining == ["3", "2", "1", "0"]
    for client in clients:
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="scripted", messages=user("shared"))
        error = assert_refused(caught.value, error_type="requests", param="requests_per_minute")
        assert f"account '{customer.name}'" in error["message"]


def _another_key(gateway: RunningGateway, account: str) -> str:
    return asyncio.run(create_key(gateway.settings, account, grant=0))


# --- unlimited, and errors after admission -------------------------------------------


def test_unlimited_in_a_tier_lifts_the_limit_and_its_headers(gateway: RunningGateway) -> None:
    customer = Customer.create(gateway, tier="standard")  # 60 a minute by default
    client = customer.client()
    for _ in range(70):
        raw = client.chat.completions.with_raw_response.create(
            model="scripted", messages=user("free")
        )
        assert raw.http_response.status_code == 200
    assert set(rate_headers(raw.headers)) == {
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
        "x-ratelimit-limit-concurrency",
        "x-ratelimit-remaining-concurrency",
    }
    assert raw.headers["x-ratelimit-limit-tokens"] == "200000"
    assert raw.headers["x-ratelimit-limit-concurrency"] == "8"
    limits = limits_of(customer)["account_limits"]
    for name in ("requests_per_minute", "tokens_per_day"):
        assert limits[name].get("limit") is None  # unlimited
        assert limits[name]["source"] == "tier"
        assert "remaining" not in limits[name]  # nothing is counted
    assert limits["tokens_per_minute"]["limit"] == 200_000  # the default, kept
    assert limits["concurrent_requests"]["limit"] == 8


def test_errors_after_admission_carry_the_headers_and_give_the_slot_back(
    gateway: RunningGateway,
) -> None:
    customer = Customer.create(gateway, tier="rl-errors", grant=1_000)  # one at a time
    client = customer.client()

    with pytest.raises(openai.APIStatusError) as broken:
        client.chat.completions.create(model="scripted-broken", messages=user("fail"))
    assert broken.value.status_code == 502
    headers = broken.value.response.headers
    assert headers["x-ratelimit-limit-requests"] == "100"
    assert headers["x-ratelimit-remaining-requests"] == "99"
    assert headers["x-ratelimit-limit-concurrency"] == "1"
    assert headers["x-ratelimit-remaining-concurrency"] == "0"  # its own slot, then
    assert headers["x-request-id"]

    with pytest.raises(openai.APIStatusError) as unpaid:  # holds 8192 tokens of output
        client.chat.completions.create(model="metered", messages=user("pay"))
    assert unpaid.value.status_code == 402
    assert unpaid.value.code == "insufficient_credits"
    headers = unpaid.value.response.headers
    assert headers["x-ratelimit-limit-requests"] == "100"
    assert headers["x-ratelimit-remaining-requests"] == "98"
    assert headers["x-ratelimit-remaining-concurrency"] == "0"

    limits = limits_of(customer)["account_limits"]
    assert limits["concurrent_requests"]["in_use"] == 0
    assert limits["tokens_per_minute"]["remaining"] == 100_000  # failures use no tokens
    assert customer.balance() == (1_000, 0)
    completion = client.chat.completions.create(model="scripted", messages=user("after"))
    assert completion.choices[0].message.content == "echo: after"
    assert in_use(customer) == 0
