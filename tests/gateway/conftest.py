"""Gateways for the API tests: one on the tiny local model, one on a scripted engine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infermesh.catalog.spec import ModelSpec, ServeSpec
from infermesh.catalog.store import default_models
from infermesh.protocol.models import Capabilities
from tests.fakes.engine import ScriptedEngine, run_engine
from tests.support.gateway import RunningGateway, start_gateway


def engine_specs(engine_url: str) -> list[ModelSpec]:
    """Catalog of the engine gateway: models served by the scripted engine, and one
    that no worker serves."""

    def served(model_id: str, engine_model: str, *, tools: bool, vision: bool) -> ModelSpec:
        return ModelSpec(
            id=model_id,
            tier="frontier",
            params="7B",
            description=f"{model_id} on the scripted engine",
            context_length=8192,
            capabilities=Capabilities(tools=tools, vision=vision),
            serve=ServeSpec(
                backend="openai",
                engine_model=engine_model,
                upstream_url=engine_url,
                upstream_key_env="SCRIPTED_ENGINE_KEY",
            ),
        )

    return [
        served("scripted", "scripted-1", tools=True, vision=True),
        served("scripted-plain", "scripted-1", tools=False, vision=False),
        served("scripted-broken", "fail-500", tools=False, vision=False),
        served("scripted-rejects", "bad-request", tools=False, vision=False),
        ModelSpec(id="orphan", tier="special", description="in the catalog, served by nobody"),
    ]


ENGINE_MODELS = ["scripted", "scripted-plain", "scripted-broken", "scripted-rejects"]


@pytest.fixture(scope="module")
def engine() -> Iterator[ScriptedEngine]:
    with run_engine(models=["scripted-1"], api_key="upstream-secret") as running:
        yield running


@pytest.fixture(scope="module")
def engine_gateway(
    engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    with start_gateway(
        tmp_path_factory.mktemp("engine-gateway"),
        specs=engine_specs(engine.base_url),
        secrets={"SCRIPTED_ENGINE_KEY": "upstream-secret"},
        wait_for=ENGINE_MODELS,
        max_body_bytes=256 * 1024,
        max_image_bytes=64 * 1024,
    ) as gateway:
        yield gateway


@pytest.fixture(scope="session")
def tiny_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with start_gateway(
        tmp_path_factory.mktemp("tiny-gateway"),
        specs=default_models(),
        wait_for=["infermesh-tiny"],
    ) as gateway:
        yield gateway
