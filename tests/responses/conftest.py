"""Fixtures of the Responses API tests: a scripted engine and the catalog that serves it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infermesh.billing.pricing import Pricing
from infermesh.catalog.spec import ModelSpec, ServeSpec
from infermesh.protocol.models import Capabilities
from tests.fakes.engine import ScriptedEngine, run_engine

ENGINE_KEY = "upstream-secret"
PRICING = Pricing(per_request="0.0001", input_per_million="1", output_per_million="2")
"""100 micro-USD a request, 1 an input token, 2 an output token."""


def scripted_specs(engine_url: str) -> list[ModelSpec]:
    """``scripted`` (tools and images) and ``scripted-plain`` (neither) on the engine,
    priced (:data:`PRICING`)."""

    def served(model_id: str, *, tools: bool) -> ModelSpec:
        return ModelSpec(
            id=model_id,
            tier="frontier",
            params="7B",
            description=f"{model_id} on the scripted engine",
            context_length=8192,
            capabilities=Capabilities(tools=tools, vision=tools),
            pricing=PRICING,
            serve=ServeSpec(
                backend="openai",
                engine_model="scripted-1",
                upstream_url=engine_url,
                upstream_key_env="SCRIPTED_ENGINE_KEY",
            ),
        )

    return [served("scripted", tools=True), served("scripted-plain", tools=False)]


@pytest.fixture(scope="module")
def engine() -> Iterator[ScriptedEngine]:
    with run_engine(models=["scripted-1"], api_key=ENGINE_KEY) as running:
        yield running
