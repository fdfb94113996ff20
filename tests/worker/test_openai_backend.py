"""OpenAIBackend against a scripted OpenAI-compatible engine over real HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from infermesh.errors import BackendError, UpstreamRejected
from infermesh.protocol.chat import ChatCompletionRequest
from infermesh.protocol.generation import GenerationChunk, GenerationJob
from infermesh.worker.backends.base import Backend
from infermesh.worker.backends.openai_http import OpenAIBackend
from tests.fakes.engine import ScriptedEngine, run_engine
from tests.support.servers import free_port, serve_app

ENGINE_MODEL = "scripted-1"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def make_job(**request: Any) -> GenerationJob:
    request.setdefault("model", "public-name")
    request.setdefault("messages", [{"role": "user", "content": "hello big world"}])
    return GenerationJob(
        id="job-1", model="public-name", request=ChatCompletionRequest.model_validate(request)
    )


async def collect(backend: OpenAIBackend, job: GenerationJob) -> list[GenerationChunk]:
    return [chunk async for chunk in backend.generate(job, ENGINE_MODEL)]


def text_of(chunks: list[GenerationChunk]) -> str:
    return "".join(chunk.content or "" for chunk in chunks)


@pytest.fixture
def engine() -> Iterator[ScriptedEngine]:
    with run_engine() as running:
        yield running


@pytest.fixture
async def backend(engine: ScriptedEngine) -> AsyncIterator[OpenAIBackend]:
    started = OpenAIBackend(engine.base_url + "/")
    await started.start()
    yield started
    await started.close()


# --- generation ----------------------------------------------------------------------


async def test_streams_text_chunks_then_finish_and_usage(backend: OpenAIBackend) -> None:
    chunks = await collect(backend, make_job())

    assert [c.content for c in chunks[:-1]] == ["echo:", " hello", " big", " world"]
    final = chunks[-1]
    assert final.content is None
    assert final.finish_reason == "stop"
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (3, 4)
    assert final.usage.total_tokens == 7


async def test_is_a_backend(backend: OpenAIBackend) -> None:
    as_backend: Backend = backend
    assert as_backend is backend
    assert backend.base_url.endswith("/v1")


async def test_forwards_the_parameters_with_the_engine_model(
    backend: OpenAIBackend, engine: ScriptedEngine
) -> None:
    sent = {
        "temperature": 0.3,
        "top_p": 0.9,
        "stop": ["\n\n", "END"],
        "seed": 42,
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
        "max_tokens": 50,
        "tools": [WEATHER_TOOL],
        "tool_choice": "none",
        "parallel_tool_calls": False,
        "response_format": {"type": "json_object"},
        "user": "user-7",
        "top_k": 20,
        "min_p": 0.05,  # an engine extra on the allow-list (test_forwarded_fields.py)
    }
    await collect(backend, make_job(**sent))

    received = engine.requests[-1]
    assert {key: received[key] for key in sent} == sent
    assert received["model"] == ENGINE_MODEL
    assert received["messages"] == [{"role": "user", "content": "hello big world"}]
    assert received["stream"] is True
    assert received["stream_options"] == {"include_usage": True}


async def test_honours_max_tokens_and_stop(backend: OpenAIBackend) -> None:
    truncated = await collect(backend, make_job(max_tokens=2))
    stopped = await collect(backend, make_job(stop="big"))

    assert text_of(truncated) == "echo: hello"
    assert truncated[-1].finish_reason == "length"
    assert text_of(stopped) == "echo: hello"
    assert stopped[-1].finish_reason == "stop"


async def test_tool_call_deltas_reassemble(backend: OpenAIBackend) -> None:
    chunks = await collect(backend, make_job(tools=[WEATHER_TOOL], tool_choice="auto"))

    deltas = [delta for chunk in chunks for delta in chunk.tool_calls or []]
    assert len(deltas) >= 3  # the head (id, name) then the arguments in pieces
    head = deltas[0]
    assert head.index == 0
    assert head.id is not None and head.id.startswith("call_")
    assert head.type == "function"
    assert head.function is not None and head.function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert json.loads(arguments) == {"echo": "hello big world"}
    assert text_of(chunks) == ""
    assert chunks[-1].finish_reason == "tool_calls"


async def test_tool_results_and_images_are_forwarded(
    backend: OpenAIBackend, engine: ScriptedEngine
) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    tool_turn = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
    ]

    tool_answer = await collect(backend, make_job(messages=tool_turn))
    assert engine.requests[-1]["messages"][2] == tool_turn[2]
    image_answer = await collect(backend, make_job(messages=[{"role": "user", "content": parts}]))

    assert text_of(tool_answer) == "tool said: sunny"
    assert text_of(image_answer) == "saw 2 image(s)"
    assert engine.requests[-1]["messages"][0]["content"] == parts


async def test_estimates_usage_when_the_engine_reports_none() -> None:
    with run_engine(report_usage=False) as engine:
        backend = OpenAIBackend(engine.base_url)
        await backend.start()
        chunks = await collect(backend, make_job(messages=[{"role": "user", "content": "x" * 40}]))
        await backend.close()

    usage = chunks[-1].usage
    assert usage is not None
    assert usage.prompt_tokens == 10  # 40 characters at about four a token
    assert usage.completion_tokens == 12  # "echo: " + 40 characters
    assert usage.total_tokens == 22


async def test_lists_the_engine_models() -> None:
    with run_engine(models=["a", "b"]) as engine:
        backend = OpenAIBackend(engine.base_url)
        await backend.start()
        assert await backend.list_models() == ["a", "b"]
        await backend.close()


async def test_needs_start() -> None:
    backend = OpenAIBackend("http://127.0.0.1:1/v1")
    with pytest.raises(RuntimeError):
        await collect(backend, make_job())


# --- failures ------------------------------------------------------------------------


async def test_upstream_400_is_a_rejection(backend: OpenAIBackend) -> None:
    job = make_job()
    with pytest.raises(UpstreamRejected) as caught:
        _ = [chunk async for chunk in backend.generate(job, "bad-request")]
    assert caught.value.message == "scripted rejection"
    assert caught.value.param == "messages"


async def test_upstream_500_is_a_backend_error(backend: OpenAIBackend) -> None:
    with pytest.raises(BackendError, match="HTTP 500"):
        _ = [chunk async for chunk in backend.generate(make_job(), "fail-500")]


async def test_model_the_engine_does_not_serve(backend: OpenAIBackend) -> None:
    with pytest.raises(BackendError, match="does not serve the model 'llama-9'"):
        _ = [chunk async for chunk in backend.generate(make_job(), "llama-9")]


async def test_unreachable_engine_is_a_backend_error() -> None:
    backend = OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", connect_timeout=5)
    await backend.start()
    with pytest.raises(BackendError, match="could not connect"):
        await collect(backend, make_job())
    await backend.close()


async def test_slow_engine_times_out() -> None:
    with run_engine(chunk_delay=5.0) as engine:
        backend = OpenAIBackend(engine.base_url, timeout=0.2)
        await backend.start()
        with pytest.raises(BackendError, match="timed out"):
            await collect(backend, make_job())
        await backend.close()
        assert await asyncio.to_thread(engine.disconnected.wait, 10)


async def test_sends_the_api_key_and_never_leaks_it() -> None:
    with run_engine(api_key="sk-upstream-secret") as engine:
        good = OpenAIBackend(engine.base_url, api_key="sk-upstream-secret")
        bad = OpenAIBackend(engine.base_url, api_key="sk-wrong-secret")
        await good.start()
        await bad.start()
        chunks = await collect(good, make_job())
        with pytest.raises(BackendError) as caught:
            await collect(bad, make_job())
        await good.close()
        await bad.close()

    assert chunks[-1].finish_reason == "stop"
    assert "HTTP 401" in caught.value.message
    assert "secret" not in caught.value.message


async def test_closing_early_disconnects_the_engine() -> None:
    with run_engine(chunk_delay=0.05) as engine:
        backend = OpenAIBackend(engine.base_url)
        await backend.start()
        words = " ".join(f"w{i}" for i in range(200))
        stream = backend.generate(
            make_job(messages=[{"role": "user", "content": words}]), "scripted-1"
        )
        first = await anext(stream)
        await stream.aclose()

        assert first.content == "echo:"
        assert await asyncio.to_thread(engine.disconnected.wait, 10)
        assert engine.disconnects == 1
        await backend.close()


def broken_engine(body: str) -> Starlette:
    """An engine that answers every chat completion with ``body`` as its event stream."""

    async def answer(request: Request) -> Response:
        return Response(body, media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", answer, methods=["POST"])])


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("data: {not json\n\n", "bad JSON"),
        ('data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n', "ended before"),
        ('data: {"error": {"message": "engine exploded"}}\n\n', "failed during"),
    ],
)
async def test_malformed_streams_are_backend_errors(body: str, problem: str) -> None:
    with serve_app(broken_engine(body)) as root:
        backend = OpenAIBackend(f"{root}/v1")
        await backend.start()
        with pytest.raises(BackendError, match=problem):
            await collect(backend, make_job())
        await backend.close()


# --- the scripted engine is a faithful double -----------------------------------------


async def test_engine_streams_to_the_openai_sdk(engine: ScriptedEngine) -> None:
    client = openai.AsyncOpenAI(base_url=engine.base_url, api_key="unused")
    stream = await client.chat.completions.create(
        model=ENGINE_MODEL,
        messages=[{"role": "user", "content": "hi there"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    await client.close()

    assert all(chunk.id.startswith("chatcmpl-") for chunk in chunks)
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hi there"
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


async def test_engine_tool_calls_parse_in_the_openai_sdk(engine: ScriptedEngine) -> None:
    client = openai.AsyncOpenAI(base_url=engine.base_url, api_key="unused")
    messages: Any = [{"role": "user", "content": "Paris"}]
    tools: Any = [WEATHER_TOOL]
    completion = await client.chat.completions.create(
        model=ENGINE_MODEL, messages=messages, tools=tools
    )
    async with client.chat.completions.stream(
        model=ENGINE_MODEL, messages=messages, tools=tools
    ) as stream:
        streamed = await stream.get_final_completion()
    await client.close()

    for answer in (completion, streamed):
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        assert choice.message.tool_calls is not None
        call = choice.message.tool_calls[0]
        assert call.id.startswith("call_")
        assert call.function.name == "get_weather"  # type: ignore[union-attr]
        assert json.loads(call.function.arguments) == {"echo": "Paris"}  # type: ignore[union-attr]


async def test_engine_errors_reach_the_openai_sdk() -> None:
    with run_engine(api_key="sk-engine") as engine:
        keyed = openai.AsyncOpenAI(base_url=engine.base_url, api_key="sk-engine")
        unkeyed = openai.AsyncOpenAI(base_url=engine.base_url, api_key="sk-other")
        messages: Any = [{"role": "user", "content": "hi"}]
        with pytest.raises(openai.NotFoundError) as missing:
            await keyed.chat.completions.create(model="nope", messages=messages)
        with pytest.raises(openai.AuthenticationError):
            await unkeyed.models.list()
        models = await keyed.models.list()
        await keyed.close()
        await unkeyed.close()

    assert missing.value.code == "model_not_found"
    assert [model.id for model in models.data] == ["scripted-1"]
