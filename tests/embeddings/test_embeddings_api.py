"""``POST /v1/embeddings`` with the official openai client: through a remote ``infermesh
worker`` on an OpenAI-compatible engine, and through the in-process engine on the tiny
embedding model; the catalog says each model's kind; bad input gets OpenAI's envelope.
"""

from __future__ import annotations

import base64
import math
import random
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from infermesh.catalog.spec import ModelSpec
from infermesh.catalog.store import default_models
from tests.fakes.engine import ScriptedEngine, embedding_of, encode_vector, run_engine
from tests.mesh.helpers import HEARTBEAT, run_worker
from tests.support.fuzz import mutated
from tests.support.gateway import RunningGateway, start_gateway

DIMS = 16


@pytest.fixture(scope="module")
def engine() -> Iterator[ScriptedEngine]:
    with run_engine(models=["embed-1", "scripted-1"], embedding_dimensions=DIMS) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A gateway whose models are served by a remote worker on the scripted engine."""
    embed = ModelSpec.model_validate(
        {
            "id": "embed",
            "kind": "embedding",
            "dimensions": DIMS,
            "context_length": 512,
            "pricing": {"input_per_million": "1000"},  # a thousandth of a dollar a token
        }
    )
    with start_gateway(
        tmp_path_factory.mktemp("embeddings-gateway"),
        specs=[embed, ModelSpec(id="chat")],
        embedded_worker=False,
        **HEARTBEAT,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def worker(
    gateway: RunningGateway, engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    options = [
        "--backend", "openai", "--upstream-url", engine.base_url,
        "--embed", "embed=embed-1", "--serve", "chat=scripted-1",
    ]  # fmt: skip
    with run_worker(gateway, *options, data_dir=tmp_path_factory.mktemp("embed-worker")):
        yield


def float32(vector: list[float]) -> list[float]:
    """The float32 values of ``vector`` (JSON writes each as its shortest float32 form)."""
    return list(struct.unpack(f"<{len(vector)}f", struct.pack(f"<{len(vector)}f", *vector)))


def unit(vector: list[float]) -> bool:
    return math.isclose(math.fsum(value * value for value in vector), 1.0, rel_tol=1e-5)


def test_embeddings_through_a_remote_worker_float_and_base64(
    gateway: RunningGateway, worker: None
) -> None:
    client = gateway.client()
    texts = ["the quick brown fox", "jumps"]
    floats = client.embeddings.create(model="embed", input=texts, encoding_format="float")
    assert [float32(item.embedding) for item in floats.data] == [
        embedding_of(text, DIMS, DIMS) for text in texts
    ]
    assert floats.model == "embed" and [item.index for item in floats.data] == [0, 1]
    assert floats.usage.prompt_tokens == 5 and floats.usage.total_tokens == 5
    assert (floats.usage.model_extra or {})["cost_micro_usd"] == 5000

    # the openai client asks for base64 by default and decodes it itself
    default = client.embeddings.create(model="embed", input=texts)
    assert [float32(item.embedding) for item in default.data] == [
        float32(item.embedding) for item in floats.data
    ]

    raw = gateway.http().post(
        "/v1/embeddings",
        json={"model": "embed", "input": "jumps", "encoding_format": "base64"},
        headers=gateway.auth(),
    )
    assert raw.status_code == 200, raw.text
    assert raw.json()["data"][0]["embedding"] == encode_vector(embedding_of("jumps", DIMS, DIMS))
    assert raw.headers["x-infermesh-cost-micro-usd"] == "1000"  # one token


def test_dimensions_and_token_arrays_reach_the_engine(
    gateway: RunningGateway, worker: None, engine: ScriptedEngine
) -> None:
    client = gateway.client()
    short = client.embeddings.create(
        model="embed", input=[[1, 2, 3]], dimensions=8, encoding_format="float"
    )
    assert float32(short.data[0].embedding) == embedding_of([1, 2, 3], DIMS, 8)
    assert len(short.data[0].embedding) == 8 and unit(short.data[0].embedding)
    assert short.usage.prompt_tokens == 3
    sent = [body for body in engine.requests if body.get("input") == [[1, 2, 3]]]
    assert sent and sent[-1]["dimensions"] == 8 and sent[-1]["model"] == "embed-1"


def test_a_model_of_the_other_kind_is_refused_with_a_400(
    gateway: RunningGateway, worker: None
) -> None:
    client = gateway.client()
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="chat", input="hi")
    assert refused.value.code == "model_not_embedding"
    assert refused.value.response.headers["x-request-id"]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="embed", messages=[{"role": "user", "content": "x"}])
    assert refused.value.code == "model_not_chat"


def test_the_catalog_says_each_models_kind_and_endpoints(gateway: RunningGateway) -> None:
    models = {model.id: model.model_extra or {} for model in gateway.client().models.list()}
    assert models["embed"]["kind"] == "embedding" and models["embed"]["dimensions"] == DIMS
    assert models["embed"]["endpoints"] == ["/v1/embeddings"]
    assert models["chat"]["kind"] == "chat" and models["chat"]["dimensions"] is None
    assert "/v1/responses" in models["chat"]["endpoints"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "embed"}, "input"),
        ({"model": "embed", "input": []}, "input"),
        ({"model": "embed", "input": ""}, "input[0]"),
        ({"model": "embed", "input": ["a", ""]}, "input[1]"),
        ({"model": "embed", "input": [[-1]]}, "input"),
        ({"model": "embed", "input": "a", "dimensions": 0}, "dimensions"),
        ({"model": "embed", "input": "a", "dimensions": DIMS + 1}, "dimensions"),
        ({"model": "embed", "input": "a", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "embed", "input": ["a"] * 2049}, "input"),
        ({"model": "embed", "input": [list(range(513))]}, "input[0]"),
        ({"input": "a"}, "model"),
    ],
)
def test_bad_input_gets_a_400_naming_the_parameter(
    gateway: RunningGateway, body: dict[str, Any], param: str
) -> None:
    response = gateway.http().post("/v1/embeddings", json=body, headers=gateway.auth())
    assert response.status_code == 400, response.text
    assert response.headers["x-request-id"]
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error


def test_no_key_unknown_model_and_bad_json(gateway: RunningGateway) -> None:
    http = gateway.http()
    unauthorized = http.post("/v1/embeddings", json={"model": "embed", "input": "a"})
    assert unauthorized.status_code == 401 and unauthorized.json()["error"]["code"]
    unknown = http.post(
        "/v1/embeddings", json={"model": "nope", "input": "a"}, headers=gateway.auth()
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    broken = http.post("/v1/embeddings", content=b"{", headers=gateway.auth())
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"


VALID_BODIES: list[dict[str, Any]] = [
    {"model": "embed", "input": "hello"},
    {"model": "embed", "input": ["a b", "c"], "encoding_format": "base64", "dimensions": 4},
    {"model": "embed", "input": [[1, 2], [3]], "encoding_format": "float", "user": "u"},
    {"model": "embed", "input": [5, 6, 7]},
]


def test_mutated_bodies_never_get_a_server_error(gateway: RunningGateway, worker: None) -> None:
    rng = random.Random(20261130)
    statuses: dict[int, int] = {}
    extra = ["input", "dimensions", "encoding_format", "model"]
    odd = ["embed", "chat", 2**31]
    with gateway.http() as http:
        for _ in range(150):
            body = mutated(rng, rng.choice(VALID_BODIES), odd, extra_keys=extra)
            answer = http.post("/v1/embeddings", json=body, headers=gateway.auth())
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
            assert answer.status_code < 500, (body, answer.text)
            assert answer.headers["x-request-id"]
            if answer.status_code >= 400:
                assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
            else:
                assert answer.json()["object"] == "list"
    assert statuses.get(200, 0) >= 10 and statuses.get(400, 0) >= 50, statuses


def test_the_in_process_engine_serves_the_tiny_embedding_model(tmp_path: Path) -> None:
    tiny = next(spec for spec in default_models() if spec.kind == "embedding")
    assert tiny.dimensions is not None
    with start_gateway(tmp_path, wait_for=[tiny.id]) as gateway:
        client = gateway.client()
        texts = ["hello world", "hello world", "something else entirely"]
        answer = client.embeddings.create(model=tiny.id, input=texts, encoding_format="float")
        vectors = [float32(item.embedding) for item in answer.data]
        assert all(len(vector) == tiny.dimensions and unit(vector) for vector in vectors)
        assert vectors[0] == vectors[1] and vectors[0] != vectors[2]
        assert answer.usage.prompt_tokens > 0
        raw = httpx.post(
            f"{gateway.api_url}/embeddings",
            json={"model": tiny.id, "input": "hello world", "encoding_format": "base64"},
            headers=gateway.auth(),
            timeout=60,
        )
        packed = base64.b64decode(raw.json()["data"][0]["embedding"])
        alone = struct.unpack(f"<{tiny.dimensions}f", packed)
        # alone, not padded in a batch: the same vector up to float rounding
        assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(alone, vectors[0], strict=True))
