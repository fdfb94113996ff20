"""Money, prices and their arithmetic, the bound on a request's tokens, and tiers."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from infermesh.billing.admin import parse_amount
from infermesh.billing.ledger import MAX_GRANT
from infermesh.billing.money import CreditUnit, format_usd, parse_usd
from infermesh.billing.pricing import TOOLS_OVERHEAD_TOKENS, Pricing, token_bound
from infermesh.billing.tiers import TierExceeded, TierPolicy
from infermesh.catalog.store import CatalogFile
from infermesh.errors import ConfigError, InvalidRequest
from infermesh.protocol.chat import ChatCompletionRequest


@pytest.mark.parametrize(
    ("value", "micro"),
    [
        ("0.15", 150_000),
        ("1", 1_000_000),
        (0.1, 100_000),
        (1, 1_000_000),
        ("0.000001", 1),
        (" 2.5 ", 2_500_000),
        ("0", 0),
        ("1e-6", 1),
        ("1000", 1_000_000_000),
    ],
)
def test_parse_usd_is_exact(value: object, micro: int) -> None:
    assert parse_usd(value) == micro


@pytest.mark.parametrize(
    "value",
    [
        "-0.01",
        -1,
        "NaN",
        float("nan"),
        "inf",
        float("-inf"),
        "0.0000001",
        "0.1234567",
        1e-7,
        "1000.000001",
        "1001",
        True,
        False,
        "",
        "ten",
        None,
    ],
)
def test_parse_usd_refuses(value: object) -> None:
    with pytest.raises(ValueError):
        parse_usd(value)


@pytest.mark.parametrize(
    "value", ["0.1000000000000000000000000000001", "999.99999999999999999999999999999"]
)
def test_parse_usd_refuses_long_fractions_instead_of_rounding_them(value: str) -> None:
    # More than 28 significant digits: the decimal context must not round the
    # fraction away (it would silently turn the first into $0.10 and the second, just
    # under the maximum, into $1000).
    with pytest.raises(ValueError):
        parse_usd(value)


def test_parse_usd_takes_another_maximum() -> None:
    assert parse_usd("5", maximum=Decimal(5)) == 5_000_000
    with pytest.raises(ValueError):
        parse_usd("5.000001", maximum=Decimal(5))


@pytest.mark.parametrize(
    ("micro", "text"),
    [
        (0, "0"),
        (1, "0.000001"),
        (150_000, "0.15"),
        (1_000_000, "1"),
        (10_000_000, "10"),
        (1_234_567, "1.234567"),
        (MAX_GRANT, "1000000"),
    ],
)
def test_format_usd_round_trips(micro: int, text: str) -> None:
    assert format_usd(micro) == text
    assert parse_usd(text, maximum=Decimal(MAX_GRANT)) == micro


def test_parse_amount_of_a_grant() -> None:
    assert parse_amount("5") == 5_000_000
    assert parse_amount("0.25") == 250_000
    assert parse_amount("1000000") == MAX_GRANT
    for bad in ["0", "-1", "1000000.000001", "0.0000001", "lots"]:
        with pytest.raises(InvalidRequest) as refused:
            parse_amount(bad)
        assert refused.value.param == "amount"


def test_credit_unit() -> None:
    unit = CreditUnit()
    assert unit.micro_per_credit == 10_000
    assert unit.credits(25_000) == 2.5
    assert unit.to_micro(Decimal("2.5")) == 25_000
    with pytest.raises(ValueError):
        unit.to_micro(Decimal("0.00001"))
    with pytest.raises(ValueError):
        CreditUnit(0)


def test_cost_per_token_is_exact_and_rounded_up() -> None:
    pricing = Pricing(input_per_million="0.50", output_per_million="1.50")
    assert (pricing.input_per_million, pricing.output_per_million) == (500_000, 1_500_000)
    # 1234 * 0.5 + 567 * 1.5 = 617 + 850.5 = 1467.5 micro-USD, rounded up.
    assert pricing.cost(1234, 567) == 1468
    assert pricing.cost(2, 0) == 1
    assert pricing.cost(0, 2) == 3
    assert pricing.cost(0, 0) == 0
    assert not pricing.flat and not pricing.free


def test_cost_rounds_up_any_fraction_of_a_micro_usd() -> None:
    pricing = Pricing(input_per_million="0.000001")
    assert pricing.cost(1, 0) == 1
    assert pricing.cost(1_000_000, 0) == 1
    assert pricing.cost(1_000_001, 0) == 2
    assert pricing.cost(2_000_000, 0) == 2


def test_flat_price_does_not_depend_on_tokens() -> None:
    pricing = Pricing(per_request="0.01")
    assert pricing.per_request == 10_000
    assert pricing.flat and not pricing.free
    assert pricing.cost(0, 0) == pricing.cost(1_000_000, 1_000_000) == 10_000


def test_per_request_and_tokens_add_up() -> None:
    pricing = Pricing(per_request="0.001", output_per_million="2")
    assert pricing.cost(0, 3) == 1_000 + 6
    assert pricing.cost(10**6, 10**6) == 1_000 + 2_000_000


def test_minimum_is_applied() -> None:
    pricing = Pricing(input_per_million="0.10", minimum="0.0001")
    assert pricing.cost(10, 0) == 100  # 1 micro-USD of tokens, raised to the minimum
    assert pricing.cost(0, 0) == 100
    assert pricing.cost(10**6, 0) == 100_000
    assert not Pricing(minimum="0.0001").free
    assert Pricing().free


@pytest.mark.parametrize(
    "fields",
    [
        {"per_request": "-0.01"},
        {"input_per_million": "0.0000001"},
        {"output_per_million": "1000.01"},
        {"minimum": True},
        {"per_request": "free"},
        {"per_token": "0.01"},
    ],
)
def test_pricing_refuses_bad_prices(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Pricing.model_validate(fields)


def test_pricing_dumps_usd_strings() -> None:
    pricing = Pricing(per_request="0.002", input_per_million=0.15)
    assert pricing.model_dump() == {
        "per_request": "0.002",
        "input_per_million": "0.15",
        "output_per_million": "0",
        "minimum": "0",
    }
    assert Pricing.model_validate(pricing.model_dump()) == pricing


CATALOG = """
[[models]]
id = "priced"
tier = "frontier"
context_length = 8192

[models.pricing]
per_request = "0.002"
input_per_million = "0.15"
output_per_million = 0.6
minimum = "0.0001"

[[models]]
id = "free"
"""


def test_pricing_in_a_toml_catalog_is_exact_and_round_trips(tmp_path: Path) -> None:
    source = CatalogFile(tmp_path / "models.toml")
    source.path.write_text(CATALOG, encoding="utf-8")
    priced, free = source.load()
    assert priced.pricing is not None and free.pricing is None
    assert priced.pricing.per_request == 2_000
    assert priced.pricing.input_per_million == 150_000
    assert priced.pricing.output_per_million == 600_000
    assert priced.pricing.minimum == 100

    copy = CatalogFile(tmp_path / "copy" / "models.toml")
    copy.save([priced, free])
    text = copy.path.read_text(encoding="utf-8")
    assert 'input_per_million = "0.15"' in text
    assert 'output_per_million = "0.6"' in text
    assert copy.load() == [priced, free]


def test_a_catalog_price_with_too_many_decimals_is_refused(tmp_path: Path) -> None:
    catalog = CatalogFile(tmp_path / "models.toml")
    catalog.path.write_text(CATALOG.replace('"0.15"', '"0.1500001"'), encoding="utf-8")
    with pytest.raises(ConfigError, match="models\\[0\\]"):
        catalog.load()


def _request(text: str, **fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "priced", "messages": [{"role": "user", "content": text}], **fields}
    )


def test_token_bound_covers_the_prompt_bytes() -> None:
    text = "héllo wörld, 你好 🙂 " * 40
    bound = token_bound(_request(text, max_tokens=100), context_length=8192)
    assert bound.prompt_tokens >= len(text.encode()) > len(text.split())
    assert bound.prompt_tokens <= 8192
    assert bound.completion_tokens == 100


def test_token_bound_never_exceeds_the_context_length() -> None:
    huge = token_bound(_request("x" * 10_000), context_length=1024)
    assert huge == type(huge)(prompt_tokens=1024, completion_tokens=1024)
    asked_too_much = token_bound(_request("hi", max_tokens=5000), context_length=1024)
    assert asked_too_much.completion_tokens == 1024
    assert asked_too_much.prompt_tokens <= 1024


def test_token_bound_prefers_max_completion_tokens() -> None:
    request = _request("hi", max_tokens=300, max_completion_tokens=20)
    assert token_bound(request, context_length=4096).completion_tokens == 20


def test_token_bound_counts_images_and_tools() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    seeing = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": [image]}], "max_tokens": 1}
    )
    assert token_bound(seeing, context_length=4096).prompt_tokens == 4096
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {}}}
    plain = token_bound(_request("hi"), context_length=100_000).prompt_tokens
    tooled = token_bound(_request("hi", tools=[tool]), context_length=100_000).prompt_tokens
    assert tooled >= plain + TOOLS_OVERHEAD_TOKENS


def test_tier_policy_allows_and_refuses() -> None:
    policy = TierPolicy()
    assert policy.allows("free", "fast") and not policy.allows("free", "frontier")
    assert policy.allows("standard", "frontier") and not policy.allows("standard", "special")
    assert policy.allows("pro", "special")
    assert not policy.allows("gold", "fast")  # an unknown account tier may use nothing
    policy.check("standard", "big", "frontier")
    custom = TierPolicy({"free": ["fast", "frontier"]})
    assert custom.allows("free", "frontier") and not custom.allows("pro", "fast")


def test_tier_exceeded_is_a_402() -> None:
    with pytest.raises(TierExceeded) as refused:
        TierPolicy().check("free", "big-model", "frontier")
    error = refused.value
    assert error.status_code == 402
    assert error.code == "tier_exceeded"
    assert error.error_type == "insufficient_quota"
    assert error.param == "model"
    assert "big-model" in error.message and "It needs one of: pro, standard." in error.message
