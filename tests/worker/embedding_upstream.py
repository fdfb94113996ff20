"""A scripted engine that speaks OpenAI's ``POST /v1/embeddings``, honest or hostile.

It stands in for vLLM, llama.cpp or a provider behind a worker's openai backend. The
model named in a request says how it answers:

* ``vec-N`` (``vec-8``, ``vec-4096``): vectors of N values (``dimensions`` of them if
  the request asked for fewer), base64 if asked for, else lists of numbers;
  ``prompt_tokens`` is the number of whitespace words (or tokens) of the inputs;
* ``floats``: ``vec-8`` that always answers lists of numbers;
* ``ignores-dimensions``: ``vec-8`` that always sends all 8 values;
* ``no-usage``: ``vec-8`` without ``usage``;
* hostile ones: ``wrong-count``, ``duplicate-index``, ``out-of-range-index``,
  ``bad-base64``, ``odd-bytes``, ``nan-base64``, ``nan-json``, ``overflow-floats``,
  ``huge-vector``, ``mixed-lengths``, ``strings``, ``not-json``, ``huge-body``;
* ``reject`` answers 400 with OpenAI's envelope, ``fail`` 500, anything else 404.

A vector's values depend only on the input and its position in the vector, so the same
input gives the same vector.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.servers import serve_app

JSON = dict[str, Any]
HOSTILE = {
    "wrong-count": "sent 2 vectors for 3 inputs",
    "duplicate-index": "vector twice",
    "out-of-range-index": "vector for no input",
    "bad-base64": "not base64",
    "odd-bytes": "not float32 values",
    "nan-base64": "not finite",
    "nan-json": "not JSON",
    "overflow-floats": "not finite",
    "huge-vector": "too long vector",
    "mixed-lengths": "different lengths",
    "strings": "not numbers",
    "not-json": "not JSON",
    "huge-body": "failed (protocol)",
}
"""The hostile models, and what the worker's error says of each."""


def fake_vector(item: str | list[int], length: int) -> list[float]:
    """The values the engine gives ``item``: from a hash of it, in [-1, 1)."""
    seed = hashlib.sha256(json.dumps(item).encode()).digest()
    return [(seed[position % 32] + position) % 256 / 128 - 1 for position in range(length)]


def as_base64(values: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


@dataclass
class EmbeddingUpstream:
    """See the module doc; ``requests`` holds every body it was sent."""

    base_url: str = ""
    requests: list[JSON] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/embeddings", self._embeddings, methods=["POST"])])

    async def _embeddings(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        model = body["model"]
        if model == "reject":
            error = {"message": "scripted rejection", "type": "invalid_request_error"}
            return JSONResponse({"error": {**error, "param": "input"}}, status_code=400)
        if model == "fail":
            return JSONResponse({"error": {"message": "boom"}}, status_code=500)
        if model == "not-json":
            return Response(b"{not json", media_type="application/json")
        if model == "huge-body":
            return Response(b" " * (8 * 1024 * 1024) + b"{}", media_type="application/json")
        if model.startswith("vec-") or model in ("floats", "ignores-dimensions", "no-usage"):
            return JSONResponse(honest_answer(body))
        if model in HOSTILE:
            return Response(hostile_answer(body), media_type="application/json")
        return JSONResponse({"error": {"message": "no such model"}}, status_code=404)


def honest_answer(body: JSON) -> JSON:
    model = body["model"]
    length = int(model[4:]) if model.startswith("vec-") else 8
    if body.get("dimensions") and model != "ignores-dimensions":
        length = min(length, body["dimensions"])
    base64_wanted = body.get("encoding_format") == "base64" and model != "floats"
    data = []
    for index, item in enumerate(body["input"]):
        values = fake_vector(item, length)
        embedding: Any = as_base64(values) if base64_wanted else values
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(
        len(item) if isinstance(item, list) else len(item.split()) for item in body["input"]
    )
    answer: JSON = {"object": "list", "data": data, "model": model}
    if model != "no-usage":
        answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return answer


def hostile_answer(body: JSON) -> bytes:
    """A broken answer: each model breaks one rule."""
    model, count = body["model"], len(body["input"])
    good = [as_base64(fake_vector(item, 8)) for item in body["input"]]
    data: list[JSON] = [{"index": index, "embedding": good[index]} for index in range(count)]
    if model == "wrong-count":
        data = data[:-1]
    elif model == "duplicate-index":
        data[-1]["index"] = 0
    elif model == "out-of-range-index":
        data[-1]["index"] = count
    elif model == "bad-base64":
        data[0]["embedding"] = "not base64!"
    elif model == "odd-bytes":
        data[0]["embedding"] = base64.b64encode(b"\x00" * 6).decode()
    elif model == "nan-base64":
        data[0]["embedding"] = as_base64([float("nan")] * 8)
    elif model == "nan-json":
        return json.dumps({"data": [{"index": 0, "embedding": [float("nan")] * 8}]}).encode()
    elif model == "overflow-floats":
        data[0]["embedding"] = [1e39] * 8
    elif model == "huge-vector":
        data[0]["embedding"] = [0.5] * 20000
    elif model == "mixed-lengths":
        data[0]["embedding"] = as_base64([0.5] * 4)
    elif model == "strings":
        data[0]["embedding"] = ["a"] * 8
    return json.dumps({"data": data, "usage": {"prompt_tokens": 1, "total_tokens": 1}}).encode()


@contextmanager
def run_embedding_upstream() -> Iterator[EmbeddingUpstream]:
    """Serve an :class:`EmbeddingUpstream` on a real uvicorn server for the block."""
    upstream = EmbeddingUpstream()
    with serve_app(upstream.app()) as root:
        upstream.base_url = f"{root}/v1"
        yield upstream
