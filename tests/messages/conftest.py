"""Fixtures of the Messages API tests: a gateway on the scripted engine, reached with the
official ``anthropic`` client."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import pytest

from infermesh.catalog.spec import ModelSpec, ServeSpec
from infermesh.protocol.models import Capabilities
from tests.fakes.engine import ScriptedEngine, run_engine
from tests.support.gateway import RunningGateway, start_gateway

ENGINE_KEY = "upstream-secret"
SERVED = ["scripted", "scripted-plain", "scripted-broken"]


def scripted_spec(
    model_id: str, engine_url: str, *, engine_model: str = "scripted-1", able: bool = True
) -> ModelSpec:
    """A priced model served (by the gateway's own worker) on the scripted engine;
    ``able`` ones take tools and images."""
    serve = ServeSpec(
        backend="openai",
        engine_model=engine_model,
        upstream_url=engine_url,
        upstream_key_env="SCRIPTED_ENGINE_KEY",
    )
    return ModelSpec.model_validate(
        {
            "id": model_id,
            "tier": "frontier",
            "context_length": 8192,
            "capabilities": Capabilities(tools=able, vision=able),
            "pricing": {"input_per_million": "1", "output_per_million": "2"},
            "serve": serve,
        }
    )


@pytest.fixture(scope="module")
def engine() -> Iterator[ScriptedEngine]:
    with run_engine(models=["scripted-1"], api_key=ENGINE_KEY) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(
    engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    specs = [
        scripted_spec("scripted", engine.base_url),
        scripted_spec("scripted-plain", engine.base_url, able=False),
        scripted_spec("scripted-broken", engine.base_url, engine_model="fail-500", able=False),
    ]
    with start_gateway(
        tmp_path_factory.mktemp("messages-gateway"),
        specs=specs,
        secrets={"SCRIPTED_ENGINE_KEY": ENGINE_KEY},
        wait_for=SERVED,
        max_body_bytes=256 * 1024,
        max_image_bytes=64 * 1024,
        tier_limits={"standard": {"requests_per_minute": 2}},  # for the rate-limit test
    ) as running:
        yield running


def sdk_client(gateway: RunningGateway, *, api_key: str | None = None) -> anthropic.Anthropic:
    """The official client on ``gateway`` (the key sent as ``x-api-key``), without retries."""
    return anthropic.Anthropic(
        base_url=gateway.base_url, api_key=api_key or gateway.key, max_retries=0, timeout=60
    )


@pytest.fixture(scope="module")
def client(gateway: RunningGateway) -> anthropic.Anthropic:
    return sdk_client(gateway)
