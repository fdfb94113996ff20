"""Which limits apply, and how they are written: pure functions, no I/O.

``LimitSettings`` validation and ``parse_settings`` messages, ``updated`` (set, replace,
clear), ``TierLimits`` (configuration over the built-in defaults, field by field),
``resolve`` (account over tier, the key's own limits), ``requested_tokens`` (the token
budget of a request), and the ``x-ratelimit-*`` headers with OpenAI's durations.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from infermesh.errors import ConfigError
from infermesh.limits.headers import rate_limit_headers, readable_duration
from infermesh.limits.policy import (
    DEFAULT_TIER_LIMITS,
    LIMIT_NAMES,
    Limit,
    LimitSettings,
    TierLimits,
    parse_settings,
    resolve,
)
from infermesh.limits.service import requested_tokens
from infermesh.limits.store import Bucket, Level, Occupancy, Pool
from infermesh.protocol.chat import ChatCompletionRequest

# --- LimitSettings ---------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 10**12, "unlimited", None])
@pytest.mark.parametrize("name", LIMIT_NAMES)
def test_limit_settings_accept_whole_numbers_and_unlimited(name: str, value: Any) -> None:
    settings = LimitSettings.model_validate({name: value})

    assert settings.value(name) == value  # type: ignore[arg-type]
    assert settings.stored() == ({} if value is None else {name: value})


@pytest.mark.parametrize(
    "value", [0, -1, 1.5, 1.0, True, "10", "Unlimited", "", 10**12 + 1, [5], {"value": 5}]
)
def test_limit_settings_refuse_anything_else(value: Any) -> None:
    with pytest.raises(ValidationError):
        LimitSettings.model_validate({"tokens_per_minute": value})


def test_limit_settings_refuse_unknown_limits() -> None:
    with pytest.raises(ValidationError):
        LimitSettings.model_validate({"requests_per_hour": 5})


def test_parse_settings_names_the_bad_field() -> None:
    with pytest.raises(ValueError) as caught:
        parse_settings({"requests_per_minute": 5, "tokens_per_day": 0})

    message = str(caught.value)
    assert "'tokens_per_day'" in message
    assert "1 to 1000000000000" in message
    assert '"unlimited"' in message
    assert "got 0" in message


def test_parse_settings_names_an_unknown_limit_and_the_real_ones() -> None:
    with pytest.raises(ValueError) as caught:
        parse_settings({"requests_per_hour": 5})

    message = str(caught.value)
    assert "unknown limit 'requests_per_hour'" in message
    assert all(name in message for name in LIMIT_NAMES)


def test_parse_settings_keeps_which_fields_were_named() -> None:
    settings = parse_settings({"requests_per_minute": 5, "concurrent_requests": None})

    assert settings.model_fields_set == {"requests_per_minute", "concurrent_requests"}
    assert settings.stored() == {"requests_per_minute": 5}


def test_updated_sets_replaces_and_clears_only_the_named_fields() -> None:
    current = LimitSettings(requests_per_minute=5, tokens_per_day=100, concurrent_requests=2)

    changed = current.updated(
        parse_settings(
            {"tokens_per_minute": 7, "requests_per_minute": "unlimited", "tokens_per_day": None}
        )
    )

    assert changed.stored() == {
        "requests_per_minute": "unlimited",
        "tokens_per_minute": 7,
        "concurrent_requests": 2,
    }
    assert current.stored() == {
        "requests_per_minute": 5,
        "tokens_per_day": 100,
        "concurrent_requests": 2,
    }
    assert current.updated(LimitSettings()).stored() == current.stored()
    assert current.updated(parse_settings({"tokens_per_minute": None})).stored() == (
        current.stored()
    )


# --- TierLimits ------------------------------------------------------------------------


def test_tier_limits_default_to_the_built_in_tiers() -> None:
    tiers = TierLimits()

    assert tiers.tiers() == ["free", "pro", "standard"]
    for tier, limits in DEFAULT_TIER_LIMITS.items():
        assert tiers.get(tier).stored() == limits
    assert tiers.get("free").stored() == {
        "requests_per_minute": 20,
        "tokens_per_minute": 40_000,
        "tokens_per_day": 100_000,
        "concurrent_requests": 2,
    }
    assert tiers.get("pro").tokens_per_day == "unlimited"


def test_configured_tier_limits_override_defaults_field_by_field() -> None:
    tiers = TierLimits(
        {"free": {"requests_per_minute": 5}, "pro": {"concurrent_requests": "unlimited"}}
    )

    assert tiers.get("free").stored() == {**DEFAULT_TIER_LIMITS["free"], "requests_per_minute": 5}
    assert tiers.get("pro").stored() == {
        **DEFAULT_TIER_LIMITS["pro"],
        "concurrent_requests": "unlimited",
    }
    assert tiers.get("standard").stored() == DEFAULT_TIER_LIMITS["standard"]


def test_a_configured_new_tier_has_only_its_own_limits() -> None:
    tiers = TierLimits({"enterprise": {"tokens_per_minute": 10_000_000}})

    assert tiers.tiers() == ["enterprise", "free", "pro", "standard"]
    assert tiers.get("enterprise").stored() == {"tokens_per_minute": 10_000_000}
    assert tiers.get("nowhere").stored() == {}


@pytest.mark.parametrize(
    ("configured", "field"),
    [
        ({"free": {"requests_per_minute": 0}}, "requests_per_minute"),
        ({"gold": {"tokens_per_day": "lots"}}, "tokens_per_day"),
        ({"gold": {"requests_per_hour": 5}}, "requests_per_hour"),
    ],
)
def test_bad_tier_configuration_names_the_tier_and_field(
    configured: dict[str, Any], field: str
) -> None:
    tier = next(iter(configured))
    with pytest.raises(ConfigError) as caught:
        TierLimits(configured)

    message = str(caught.value)
    assert "INFERMESH_TIER_LIMITS" in message
    assert f"tier '{tier}'" in message
    assert f"'{field}'" in message


@pytest.mark.parametrize("limits", ["fast", 5, None, ["requests_per_minute"]])
def test_tier_limits_that_are_not_an_object_are_described_as_such(limits: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        TierLimits({"gold": limits})

    message = str(caught.value)
    assert "tier 'gold'" in message
    assert "must be an object" in message
    assert "whole number" not in message


# --- resolve ---------------------------------------------------------------------------


def test_resolve_takes_the_accounts_own_setting_over_its_tiers() -> None:
    tier = TierLimits().get("free")
    account = LimitSettings(requests_per_minute=100, tokens_per_day="unlimited")

    limits = resolve(tier, account, LimitSettings())

    assert limits.account == {
        "requests_per_minute": Limit("requests_per_minute", 100, "account"),
        "tokens_per_minute": Limit("tokens_per_minute", 40_000, "tier"),
        "tokens_per_day": Limit("tokens_per_day", None, "account"),
        "concurrent_requests": Limit("concurrent_requests", 2, "tier"),
    }
    assert limits.key == {}


def test_resolve_gives_the_key_only_its_own_limits() -> None:
    tier = TierLimits().get("standard")
    key = LimitSettings(tokens_per_minute=50, concurrent_requests="unlimited")

    limits = resolve(tier, LimitSettings(), key)

    assert limits.key == {
        "tokens_per_minute": Limit("tokens_per_minute", 50, "key"),
        "concurrent_requests": Limit("concurrent_requests", None, "key"),
    }
    assert limits.account["tokens_per_minute"] == Limit("tokens_per_minute", 200_000, "tier")
    assert limits.account["concurrent_requests"] == Limit("concurrent_requests", 8, "tier")


def test_a_tier_named_nowhere_is_unlimited() -> None:
    limits = resolve(TierLimits().get("nowhere"), LimitSettings(), LimitSettings())

    assert {name: limit.value for name, limit in limits.account.items()} == dict.fromkeys(
        LIMIT_NAMES
    )
    assert {limit.source for limit in limits.account.values()} == {"tier"}


def test_limit_windows() -> None:
    limits = resolve(TierLimits().get("pro"), LimitSettings(), LimitSettings()).account

    assert limits["requests_per_minute"].window == 60.0
    assert limits["tokens_per_minute"].window == 60.0
    assert limits["tokens_per_day"].window == 86400.0
    assert limits["concurrent_requests"].window is None


# --- requested_tokens ------------------------------------------------------------------


def chat(*messages: dict[str, Any], **fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "scripted", "messages": list(messages), **fields}
    )


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def image(url: str = "https://example.com/cat.png") -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


@pytest.mark.parametrize(
    ("content", "expected"),
    [("abcdefgh", 2), ("abcdefghi", 3), ("a", 1), ("", 1), ("x" * 400, 100)],
)
def test_requested_tokens_counts_four_characters_a_token(content: str, expected: int) -> None:
    assert requested_tokens(chat(user(content))) == expected


def test_requested_tokens_counts_every_message() -> None:
    request = chat(
        {"role": "system", "content": "abcd"},
        user("abcd"),
        {"role": "assistant", "content": "ab"},
        user("cd"),
    )

    assert requested_tokens(request) == 3


def test_requested_tokens_counts_text_parts_and_images() -> None:
    assert requested_tokens(chat(user([text("abcd"), image(), text("efgh")]))) == 2 + 85
    assert requested_tokens(chat(user([image(), image()]))) == 170
    assert requested_tokens(chat(user([image()]), user("abcde"))) == 85 + 2


def test_requested_tokens_counts_tool_calls_and_tools() -> None:
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    assert requested_tokens(chat(call)) == math.ceil((11 + 16) / 4)

    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city, now.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    with_tool = chat(user("abcd"), tools=[tool])
    assert with_tool.tools is not None
    tool_json = with_tool.tools[0].model_dump_json()
    assert requested_tokens(with_tool) == math.ceil((4 + len(tool_json)) / 4)
    assert requested_tokens(chat(user("abcd"), tools=[tool, tool])) == math.ceil(
        (4 + 2 * len(tool_json)) / 4
    )


def test_requested_tokens_adds_the_completion_budget() -> None:
    assert requested_tokens(chat(user("abcd"), max_tokens=100)) == 101
    assert requested_tokens(chat(user("abcd"), max_completion_tokens=30)) == 31
    assert requested_tokens(chat(user("abcd"), max_tokens=100, max_completion_tokens=50)) == 51
    assert requested_tokens(chat(user("abcd"), max_tokens=10, max_completion_tokens=50)) == 51


def test_requested_tokens_is_at_least_one_plus_the_budget() -> None:
    assert requested_tokens(chat({"role": "assistant", "content": None})) == 1
    assert requested_tokens(chat(user(""), max_tokens=10)) == 11
    assert requested_tokens(chat(user([]), max_completion_tokens=5)) == 6


# --- headers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "written"),
    [
        (0, "0s"),
        (-3.0, "0s"),
        (0.0001, "1ms"),
        (0.0172, "17ms"),
        (0.5, "500ms"),
        (1.5, "1.5s"),
        (20, "20s"),
        (59.9164, "59.916s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (3600, "1h0m0s"),
        (7503, "2h5m3s"),
        (86400, "24h0m0s"),
    ],
)
def test_readable_duration(seconds: float, written: str) -> None:
    assert readable_duration(seconds) == written


def test_headers_show_each_limit_with_openai_names() -> None:
    requests = Level(Bucket("a:rpm", 60, 60.0), 59, 1.0)
    tokens = Level(Bucket("a:tpm", 200_000, 60.0), 199_000, 0.3)
    daily = Level(Bucket("a:tpd", 5_000_000, 86400.0), 4_999_000, 17.28)
    pool = Occupancy(Pool("a:concurrent", 8), 3)

    headers = rate_limit_headers(
        [
            ("requests_per_minute", requests),
            ("tokens_per_minute", tokens),
            ("tokens_per_day", daily),
        ],
        [("concurrent_requests", pool)],
    )

    assert headers == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "200000",
        "x-ratelimit-remaining-tokens": "199000",
        "x-ratelimit-reset-tokens": "300ms",
        "x-ratelimit-limit-tokens-day": "5000000",
        "x-ratelimit-remaining-tokens-day": "4999000",
        "x-ratelimit-reset-tokens-day": "17.28s",
        "x-ratelimit-limit-concurrency": "8",
        "x-ratelimit-remaining-concurrency": "5",
    }


@pytest.mark.parametrize("key_first", [False, True])
def test_headers_show_the_tighter_of_account_and_key(key_first: bool) -> None:
    account = Level(Bucket("a:rpm", 600, 60.0), 599, 0.1)
    key = Level(Bucket("a:k:1:rpm", 10, 60.0), 9, 6.0)
    account_pool = Occupancy(Pool("a:concurrent", 32), 1)
    key_pool = Occupancy(Pool("a:k:1:concurrent", 4), 1)
    levels = [("requests_per_minute", account), ("requests_per_minute", key)]
    pools = [("concurrent_requests", account_pool), ("concurrent_requests", key_pool)]
    if key_first:
        levels.reverse()
        pools.reverse()

    headers = rate_limit_headers(levels, pools)  # type: ignore[arg-type]

    assert headers == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "6s",
        "x-ratelimit-limit-concurrency": "4",
        "x-ratelimit-remaining-concurrency": "3",
    }


def test_headers_follow_remaining_not_the_limit() -> None:
    account = Level(Bucket("a:tpm", 1000, 60.0), 5, 59.7)  # a small key limit, but more left
    key = Level(Bucket("a:k:1:tpm", 100, 60.0), 100, 0.0)

    headers = rate_limit_headers([("tokens_per_minute", key), ("tokens_per_minute", account)], [])

    assert headers["x-ratelimit-limit-tokens"] == "1000"
    assert headers["x-ratelimit-remaining-tokens"] == "5"
    assert headers["x-ratelimit-reset-tokens"] == "59.7s"


def test_no_limits_no_headers() -> None:
    assert rate_limit_headers([], []) == {}
