"""Embeddings in the backends: the tiny embedding model on the transformers backend, and
the openai backend against a scripted upstream, honest and hostile; the model host
routing jobs of each kind."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import AutoModel, AutoTokenizer

from infermesh.catalog.store import (
    BUILTIN_TINY_EMBED,
    TINY_EMBED_CONTEXT_LENGTH,
    TINY_EMBED_DIMENSIONS,
    default_models,
)
from infermesh.errors import BackendError, InvalidRequest, ModelNotFound, UpstreamRejected
from infermesh.protocol.chat import ChatCompletionRequest
from infermesh.protocol.embeddings import EmbeddingJob
from infermesh.protocol.generation import GenerationChunk, GenerationJob
from infermesh.worker.agent.config import serve_spec
from infermesh.worker.backends.base import Backend
from infermesh.worker.backends.openai_embeddings import body_limit
from infermesh.worker.backends.openai_http import OpenAIBackend
from infermesh.worker.backends.transformers import TransformersBackend
from infermesh.worker.engine.embedder import Embedder
from infermesh.worker.host import HostOptions, ModelHost
from infermesh.worker.tiny_embed import ensure_tiny_embed_model
from tests.worker.embedding_upstream import (
    HOSTILE,
    EmbeddingUpstream,
    fake_vector,
    run_embedding_upstream,
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello! How are you today?",
    "def add(a, b): return a + b",
    "café naïve 東京 🙂",
    "a",
]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embed-models")


@pytest.fixture(scope="module")
def tiny_embed_path(models_dir: Path) -> Path:
    return ensure_tiny_embed_model(models_dir)


@pytest.fixture
async def backend(tiny_embed_path: Path) -> AsyncIterator[TransformersBackend]:
    backend = TransformersBackend(
        [], embedding_models=[str(tiny_embed_path)], device="cpu", max_batch_size=4
    )
    await backend.start()
    yield backend
    await backend.close()


def job(inputs: list[Any], *, dimensions: int | None = None, job_id: str = "e-1") -> EmbeddingJob:
    return EmbeddingJob(id=job_id, model="tiny-embed", input=inputs, dimensions=dimensions)


async def run(backend: Backend, engine_model: str, embedding_job: EmbeddingJob) -> Any:
    """The job's vectors by index (a matrix) and its final chunk."""
    chunks = [chunk async for chunk in backend.embed(embedding_job, engine_model)]
    *pieces, final = chunks
    assert all(piece.embeddings and piece.finish_reason is None for piece in pieces)
    assert final.embeddings is None and final.finish_reason == "stop"
    vectors = {v.index: decode(v.embedding) for piece in pieces for v in piece.embeddings or ()}
    assert sorted(vectors) == list(range(len(embedding_job.input)))  # each index once
    assert sum(len(piece.embeddings or ()) for piece in pieces) == len(embedding_job.input)
    return np.stack([vectors[index] for index in range(len(vectors))]), final


def decode(text: str) -> Any:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


# --- the tiny embedding model ----------------------------------------------------------


def test_the_tiny_embedding_model_is_an_encoder_built_once(
    tiny_embed_path: Path, models_dir: Path
) -> None:
    written = (tiny_embed_path / "config.json").stat().st_mtime_ns
    assert ensure_tiny_embed_model(models_dir) == tiny_embed_path
    assert (tiny_embed_path / "config.json").stat().st_mtime_ns == written
    model = AutoModel.from_pretrained(tiny_embed_path)
    assert model.config.model_type == "bert"
    assert model.config.num_hidden_layers == 2
    assert model.config.hidden_size == TINY_EMBED_DIMENSIONS
    assert model.config.max_position_embeddings == TINY_EMBED_CONTEXT_LENGTH
    (catalog_entry,) = [spec for spec in default_models() if spec.kind == "embedding"]
    assert catalog_entry.dimensions == TINY_EMBED_DIMENSIONS
    assert catalog_entry.context_length == TINY_EMBED_CONTEXT_LENGTH
    assert catalog_entry.serve is not None
    assert catalog_entry.serve.engine_model == BUILTIN_TINY_EMBED


async def test_vectors_are_unit_length_deterministic_and_tell_texts_apart(
    backend: TransformersBackend, tiny_embed_path: Path
) -> None:
    model = str(tiny_embed_path)
    vectors, final = await run(backend, model, job([*TEXTS, TEXTS[0]]))
    again, _ = await run(backend, model, job(TEXTS))
    assert vectors.shape == (len(TEXTS) + 1, TINY_EMBED_DIMENSIONS)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(vectors).all()
    assert np.allclose(vectors[: len(TEXTS)], again, atol=1e-6)  # deterministic
    assert np.allclose(vectors[0], vectors[-1], atol=1e-6)  # the same text, the same vector
    similarity = vectors[: len(TEXTS)] @ vectors[: len(TEXTS)].T
    assert (similarity[~np.eye(len(TEXTS), dtype=bool)] < 0.999).all()  # texts differ
    tokenizer = AutoTokenizer.from_pretrained(tiny_embed_path)
    tokens = sum(len(tokenizer(text)["input_ids"]) for text in [*TEXTS, TEXTS[0]])
    assert final.usage.model_dump() == {
        "prompt_tokens": tokens,
        "completion_tokens": 0,
        "total_tokens": tokens,
    }


async def test_dimensions_cut_the_vector_and_normalise_it_again(
    backend: TransformersBackend, tiny_embed_path: Path
) -> None:
    full, _ = await run(backend, str(tiny_embed_path), job(TEXTS))
    short, _ = await run(backend, str(tiny_embed_path), job(TEXTS, dimensions=16))
    assert short.shape == (len(TEXTS), 16)
    expected = full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True)
    assert np.allclose(short, expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)
    same, _ = await run(backend, str(tiny_embed_path), job(TEXTS, dimensions=64))
    assert np.allclose(same, full, atol=1e-6)


async def test_token_arrays_give_the_vector_of_their_text(
    backend: TransformersBackend, tiny_embed_path: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_embed_path)
    ids = [tokenizer(text)["input_ids"] for text in TEXTS]
    from_text, text_final = await run(backend, str(tiny_embed_path), job(TEXTS))
    from_ids, ids_final = await run(backend, str(tiny_embed_path), job(ids))
    assert np.allclose(from_text, from_ids, atol=1e-6)
    assert ids_final.usage == text_final.usage


async def test_a_batch_of_many_inputs_equals_them_one_by_one(
    backend: TransformersBackend, tiny_embed_path: Path
) -> None:
    inputs = [f"{TEXTS[index % len(TEXTS)]} {'word ' * index}" for index in range(30)]
    together, _ = await run(backend, str(tiny_embed_path), job(inputs))
    alone = [(await run(backend, str(tiny_embed_path), job([text])))[0][0] for text in inputs]
    assert np.allclose(together, np.stack(alone), atol=1e-5)


@pytest.fixture
async def embedder(tiny_embed_path: Path) -> AsyncIterator[Embedder]:
    model = AutoModel.from_pretrained(tiny_embed_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_embed_path)
    embedder = Embedder(model, tokenizer, context_length=512, max_batch_size=4)
    yield embedder
    await embedder.close()


async def first_piece(embedder: Embedder, ids: list[list[int]]) -> int:
    """The forward passes run when the first vectors of ``ids`` came."""
    pieces = embedder.vectors(ids)
    await anext(pieces)
    passes = embedder.passes
    await pieces.aclose()
    return passes


async def test_jobs_waiting_together_share_forward_passes(embedder: Embedder) -> None:
    singles = await asyncio.gather(*(first_piece(embedder, [[5, 6, n]]) for n in range(4)))
    assert singles == [1, 1, 1, 1]  # four jobs of one input: one pass
    big = [[5, 6, n] for n in range(12)]
    passes = embedder.passes
    big_first, small_first = await asyncio.gather(
        first_piece(embedder, big), first_piece(embedder, [[7, 8]])
    )
    # The small job came after the big one but shares its first pass instead of waiting
    # for the big one's three; the big one's first four vectors need a second pass.
    assert (big_first - passes, small_first - passes) == (2, 1)


async def test_a_pass_holds_at_most_its_token_budget(tiny_embed_path: Path) -> None:
    model = AutoModel.from_pretrained(tiny_embed_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_embed_path)
    embedder = Embedder(
        model, tokenizer, context_length=512, max_batch_size=8, max_batch_tokens=1024
    )
    try:
        ids = [[5] * 400, [6] * 400, [7] * 400, [8] * 10, [9] * 10]
        pieces = [piece async for piece in embedder.vectors(ids)]
    finally:
        await embedder.close()
    assert sorted(index for indices, _ in pieces for index in indices) == list(range(5))
    assert embedder.passes == 3  # the two short ones, two long ones, the last long one


async def test_an_input_longer_than_the_context_fails_the_job(
    backend: TransformersBackend, tiny_embed_path: Path
) -> None:
    too_long = ["x" * (TINY_EMBED_CONTEXT_LENGTH + 1)]
    for inputs in (["short", *too_long], [[5] * (TINY_EMBED_CONTEXT_LENGTH + 1)]):
        with pytest.raises(InvalidRequest) as raised:
            await run(backend, str(tiny_embed_path), job(inputs))
        assert raised.value.code == "context_length_exceeded"
        assert raised.value.param == "input"
    fits, _ = await run(backend, str(tiny_embed_path), job([[5] * TINY_EMBED_CONTEXT_LENGTH]))
    assert fits.shape == (1, TINY_EMBED_DIMENSIONS)


@pytest.mark.parametrize(
    ("inputs", "dimensions", "param"),
    [
        (["hello"], TINY_EMBED_DIMENSIONS + 1, "dimensions"),
        ([[1, 2, 10**9]], None, "input"),
        (["hello", ""], None, "input"),
    ],
    ids=["more-dimensions-than-the-model", "token-beyond-the-vocabulary", "empty-text"],
)
async def test_requests_the_model_cannot_serve_are_invalid(
    backend: TransformersBackend,
    tiny_embed_path: Path,
    inputs: list[Any],
    dimensions: int | None,
    param: str,
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        await run(backend, str(tiny_embed_path), job(inputs, dimensions=dimensions))
    assert (raised.value.code, raised.value.param) == ("invalid_request", param)


async def test_a_job_left_early_leaves_nothing_queued(
    backend: TransformersBackend, tiny_embed_path: Path
) -> None:
    chunks = backend.embed(job([f"text {index}" for index in range(40)]), str(tiny_embed_path))
    first = await anext(chunks)
    assert first.embeddings
    await chunks.aclose()
    embedder = backend._embedders[str(tiny_embed_path)]
    passes = embedder.passes
    vectors, _ = await run(backend, str(tiny_embed_path), job(["after"]))
    assert vectors.shape == (1, TINY_EMBED_DIMENSIONS)
    assert embedder.passes - passes <= 2  # at most the pass running when it left, and its own


async def test_jobs_running_when_the_backend_closes_fail(
    backend: TransformersBackend, tiny_embed_path: Path
) -> None:
    chunks = backend.embed(job([f"text {index}" for index in range(40)]), str(tiny_embed_path))
    assert (await anext(chunks)).embeddings
    await backend.close()
    with pytest.raises(BackendError, match="unloaded"):
        async with asyncio.timeout(30):
            await anext(chunks)
    await chunks.aclose()


async def test_the_host_routes_each_kind_and_builds_the_builtin(
    tiny_embed_path: Path, models_dir: Path
) -> None:
    spec = serve_spec("tiny-embed", backend="transformers", kind="embedding")
    assert spec.serve is not None and spec.serve.engine_model == "tiny-embed"
    builtin = serve_spec("infermesh-tiny-embed", backend="transformers", kind="embedding")
    assert builtin.serve is not None and builtin.serve.engine_model == BUILTIN_TINY_EMBED
    host = ModelHost([builtin], HostOptions(models_dir=models_dir, device="cpu"))
    await host.start()
    try:
        assert host.is_ready("infermesh-tiny-embed", "embedding")
        assert not host.is_ready("infermesh-tiny-embed", "chat")
        embedding_job = EmbeddingJob(id="e", model="infermesh-tiny-embed", input=["hi"])
        chunks = [chunk async for chunk in host.generate(embedding_job)]
        assert len(chunks[0].embeddings or ()) == 1
        request = ChatCompletionRequest(
            model="infermesh-tiny-embed", messages=[{"role": "user", "content": "hi"}]
        )
        chat = GenerationJob(id="c", model="infermesh-tiny-embed", request=request)
        with pytest.raises(ModelNotFound):
            host.generate(chat)
    finally:
        await host.close()
    assert names_in(models_dir) == ["infermesh-tiny-embed"]  # built there once, nothing else


def names_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


# --- the openai backend ----------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[EmbeddingUpstream]:
    with run_embedding_upstream() as running:
        yield running


@pytest.fixture
async def openai_backend(upstream: EmbeddingUpstream) -> AsyncIterator[OpenAIBackend]:
    backend = OpenAIBackend(upstream.base_url, timeout=30)
    await backend.start()
    yield backend
    await backend.close()


@pytest.mark.parametrize("model", ["vec-8", "floats"])
async def test_the_upstream_vectors_come_through_as_base64(
    openai_backend: OpenAIBackend, upstream: EmbeddingUpstream, model: str
) -> None:
    inputs = ["one two", "three", "one two"]
    vectors, final = await run(openai_backend, model, job(inputs))
    expected = np.array([fake_vector(text, 8) for text in inputs], dtype=np.float32)
    assert np.array_equal(vectors, expected)
    assert final.usage.model_dump() == {
        "prompt_tokens": 5,
        "completion_tokens": 0,
        "total_tokens": 5,
    }
    assert upstream.requests[-1] == {
        "model": model,
        "input": inputs,
        "encoding_format": "base64",
    }


async def test_dimensions_go_upstream_and_are_enforced(
    openai_backend: OpenAIBackend, upstream: EmbeddingUpstream
) -> None:
    vectors, _ = await run(openai_backend, "vec-8", job([[1, 2, 3]], dimensions=4))
    assert upstream.requests[-1]["dimensions"] == 4
    assert upstream.requests[-1]["input"] == [[1, 2, 3]]
    assert np.array_equal(vectors[0], np.array(fake_vector([1, 2, 3], 4), dtype=np.float32))
    # An upstream that ignores dimensions: its vectors are cut and normalised again here.
    cut, _ = await run(openai_backend, "ignores-dimensions", job(["a b"], dimensions=4))
    full = np.array(fake_vector("a b", 8)[:4])
    assert np.allclose(cut[0], full / np.linalg.norm(full), atol=1e-6)
    with pytest.raises(BackendError, match="4 dimensions; 6 were asked"):
        await run(openai_backend, "vec-4", job(["a"], dimensions=6))


async def test_an_upstream_without_usage_is_estimated(openai_backend: OpenAIBackend) -> None:
    _, final = await run(openai_backend, "no-usage", job(["abcdefgh", "abc"]))
    assert final.usage.prompt_tokens == 2 + 1  # about 4 characters a token
    _, final = await run(openai_backend, "no-usage", job([[1, 2, 3], [4]]))
    assert final.usage.prompt_tokens == 3 + 1


async def test_large_vectors_arrive_whole(openai_backend: OpenAIBackend) -> None:
    vectors, _ = await run(openai_backend, "vec-4096", job([f"text {n}" for n in range(40)]))
    assert vectors.shape == (40, 4096)


@pytest.mark.parametrize(("model", "problem"), HOSTILE.items(), ids=list(HOSTILE))
async def test_a_hostile_upstream_fails_the_job(
    openai_backend: OpenAIBackend, model: str, problem: str
) -> None:
    with pytest.raises(BackendError) as raised:
        await run(openai_backend, model, job(["one", "two", "three"]))
    assert raised.value.code == "backend_error"
    assert problem in raised.value.message


async def test_upstream_errors_map_as_for_chat(openai_backend: OpenAIBackend) -> None:
    with pytest.raises(UpstreamRejected, match="scripted rejection") as rejected:
        await run(openai_backend, "reject", job(["a"]))
    assert rejected.value.param == "input"
    with pytest.raises(BackendError, match=r"HTTP 500"):
        await run(openai_backend, "fail", job(["a"]))
    with pytest.raises(BackendError, match="does not serve the model 'absent'"):
        await run(openai_backend, "absent", job(["a"]))
    backend = OpenAIBackend("http://127.0.0.1:9/v1", connect_timeout=5)
    await backend.start()
    with pytest.raises(BackendError, match="could not connect"):
        await run(backend, "vec-8", job(["a"]))
    await backend.close()


def test_the_body_read_is_bounded_by_the_job() -> None:
    one, many = body_limit(job(["a"])), body_limit(job(["a"] * 2048))
    assert one < 1024 * 1024
    assert many == 256 * 1024 * 1024


async def test_the_chunks_are_generation_chunks(openai_backend: OpenAIBackend) -> None:
    chunks = [chunk async for chunk in openai_backend.embed(job(["a", "b"]), "vec-8")]
    assert all(isinstance(chunk, GenerationChunk) for chunk in chunks)
    as_backend: Backend = openai_backend
    assert as_backend is openai_backend
