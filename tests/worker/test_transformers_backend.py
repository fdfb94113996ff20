"""The transformers backend on the tiny model: streaming, limits, sampling, batching, cancelling."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from infermesh.errors import BackendError, InvalidRequest
from infermesh.protocol.chat import ChatCompletionRequest
from infermesh.protocol.generation import GenerationChunk, GenerationJob
from infermesh.worker.backends.base import Backend
from infermesh.worker.backends.transformers import TransformersBackend, stream_chunks
from infermesh.worker.engine import EngineEvent, Finished, TextDelta, render_prompt

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def make_job(content: Any = "Hello there", **options: Any) -> GenerationJob:
    request = ChatCompletionRequest(
        model="tiny", messages=[{"role": "user", "content": content}], **options
    )
    return GenerationJob(id="job-1", model="tiny", request=request)


async def collect(backend: TransformersBackend, model: str, job: GenerationJob) -> list[Any]:
    return [chunk async for chunk in backend.generate(job, model)]


def text_of(chunks: list[GenerationChunk]) -> str:
    return "".join(chunk.content or "" for chunk in chunks)


async def wait_until(predicate: Callable[[], bool], within: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture
def model(tiny_model_path: Path) -> str:
    return str(tiny_model_path)


async def test_is_a_backend(tiny_backend: TransformersBackend) -> None:
    backend: Backend = tiny_backend
    assert backend is tiny_backend


async def test_streams_content_then_finish_with_usage(
    tiny_backend: TransformersBackend, model: str, tiny_model_path: Path
) -> None:
    job = make_job(temperature=0, max_tokens=12)
    chunks = await collect(tiny_backend, model, job)
    *content, final = chunks
    assert len(content) >= 3
    assert all(c.content and c.finish_reason is None and c.usage is None for c in content)
    assert final.content is None and final.finish_reason == "length"
    prompt = render_prompt(AutoTokenizer.from_pretrained(tiny_model_path), job.request)
    assert final.usage.prompt_tokens == len(prompt)
    assert final.usage.completion_tokens == 12
    assert final.usage.total_tokens == len(prompt) + 12


async def test_max_completion_tokens_counts_generated_tokens(
    tiny_backend: TransformersBackend, model: str
) -> None:
    for limit in (1, 7):
        chunks = await collect(tiny_backend, model, make_job(max_completion_tokens=limit))
        assert chunks[-1].finish_reason == "length"
        assert chunks[-1].usage.completion_tokens == limit


async def test_end_of_turn_token_stops_with_reason_stop(
    tiny_backend: TransformersBackend, model: str
) -> None:
    # The tiny model's greedy answer to this prompt ends with <|im_end|> after 48 tokens.
    chunks = await collect(tiny_backend, model, make_job("is the", temperature=0))
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage.completion_tokens < 100
    assert "<|im_end|>" not in text_of(chunks)


async def test_stop_string_split_across_tokens_is_never_emitted(
    tiny_backend: TransformersBackend, model: str
) -> None:
    free = await collect(tiny_backend, model, make_job(temperature=0, max_tokens=40))
    pieces = [chunk.content for chunk in free if chunk.content]
    full = "".join(pieces)
    stop, cut = None, 0
    for index in range(1, len(pieces) - 1):
        left, right = pieces[index], pieces[index + 1]
        candidate = left[-2:] + right[:2]
        position = len("".join(pieces[: index + 1])) - 2
        if len(left) >= 2 and len(right) >= 2 and full.find(candidate) == position > 0:
            stop, cut = candidate, position
            break
    assert stop is not None, f"no stop string spanning two tokens in {full!r}"
    job = make_job(temperature=0, max_tokens=40, stop=["never appears", stop])
    stopped = await collect(tiny_backend, model, job)
    assert text_of(stopped) == full[:cut]
    assert stop not in text_of(stopped)
    assert stopped[-1].finish_reason == "stop"
    assert stopped[-1].usage.completion_tokens < 40


async def test_same_seed_same_text_other_seed_other_text(
    tiny_backend: TransformersBackend, model: str
) -> None:
    async def sample(seed: int) -> str:
        job = make_job(temperature=1.0, seed=seed, max_tokens=20)
        return text_of(await collect(tiny_backend, model, job))

    first = await sample(1234)
    assert await sample(1234) == first
    assert await sample(4321) != first


async def test_seeded_sampling_is_the_same_inside_a_busy_batch(
    tiny_backend: TransformersBackend, model: str
) -> None:
    job = make_job(temperature=1.0, seed=99, max_tokens=25)
    alone = text_of(await collect(tiny_backend, model, job))
    others = [make_job("x" * size, temperature=1.0, max_tokens=40) for size in (1, 9, 30)]
    together = await asyncio.gather(*(collect(tiny_backend, model, one) for one in [job, *others]))
    assert text_of(together[0]) == alone
    assert tiny_backend.engine_stats(model).max_batch_size > 1


async def test_penalties_discourage_repeats(tiny_backend: TransformersBackend, model: str) -> None:
    async def pieces(**options: Any) -> list[str]:
        chunks = await collect(
            tiny_backend, model, make_job(temperature=0, max_tokens=60, **options)
        )
        return [chunk.content for chunk in chunks if chunk.content]

    plain = await pieces()
    penalised = await pieces(presence_penalty=2.0, frequency_penalty=1.0)
    assert penalised != plain
    assert max(Counter(penalised).values()) < max(Counter(plain).values())


async def test_concurrent_requests_share_decode_steps(
    tiny_backend: TransformersBackend, model: str
) -> None:
    jobs = [make_job(f"Request {i} " * (i + 1), temperature=0, max_tokens=30) for i in range(6)]
    results = await asyncio.gather(*(collect(tiny_backend, model, job) for job in jobs))
    assert all(chunks[-1].usage.completion_tokens == 30 for chunks in results)
    stats = tiny_backend.engine_stats(model)
    assert stats.max_batch_size > 1
    assert sum(size > 1 for size in stats.batch_sizes) >= 10
    assert stats.completed == 6 and stats.running == 0


async def test_a_newcomer_joins_a_running_batch_without_changing_answers(
    tiny_backend: TransformersBackend, model: str
) -> None:
    long_job = make_job("Tell me a story about a dragon.", temperature=0, max_tokens=300)
    short_job = make_job("Hi", temperature=0, max_tokens=20)
    long_alone = text_of(await collect(tiny_backend, model, long_job))
    short_alone = text_of(await collect(tiny_backend, model, short_job))
    steps_before = len(tiny_backend.engine_stats(model).batch_sizes)

    stream = tiny_backend.generate(long_job, model)
    long_chunks = [await anext(stream)]
    short_chunks = await collect(tiny_backend, model, short_job)
    long_chunks += [chunk async for chunk in stream]

    assert text_of(short_chunks) == short_alone
    assert text_of(long_chunks) == long_alone
    joined = tiny_backend.engine_stats(model).batch_sizes[steps_before:]
    assert joined[0] == 1 and 2 in joined and joined[-1] == 1


async def test_closing_the_stream_cancels_the_sequence(
    tiny_backend: TransformersBackend, model: str
) -> None:
    stream = tiny_backend.generate(make_job(temperature=0, max_tokens=900), model)
    await anext(stream)
    await stream.aclose()
    await wait_until(
        lambda: (
            tiny_backend.engine_stats(model).cancelled == 1
            and tiny_backend.engine_stats(model).running == 0
        )
    )
    cancelled = tiny_backend.engine_stats(model)
    assert cancelled.generated_tokens < 900
    chunks = await collect(tiny_backend, model, make_job(max_tokens=5))
    after = tiny_backend.engine_stats(model)
    assert (
        after.generated_tokens - cancelled.generated_tokens
        == 5
        == chunks[-1].usage.completion_tokens
    )


async def test_cancelling_the_consumer_task_cancels_the_sequence(
    tiny_backend: TransformersBackend, model: str
) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in tiny_backend.generate(make_job(temperature=0, max_tokens=900), model):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(
        lambda: (
            tiny_backend.engine_stats(model).cancelled == 1
            and tiny_backend.engine_stats(model).running == 0
        )
    )
    assert tiny_backend.engine_stats(model).generated_tokens < 900


async def test_text_parts_are_joined_and_images_refused(
    tiny_backend: TransformersBackend, model: str
) -> None:
    parts = [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]
    chunks = await collect(tiny_backend, model, make_job(parts, max_tokens=3))
    assert chunks[-1].usage.completion_tokens == 3
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(InvalidRequest) as refused:
        await collect(tiny_backend, model, make_job([parts[0], image]))
    assert refused.value.param == "messages[0].content"


async def test_requests_beyond_the_context_are_refused(
    tiny_backend: TransformersBackend, model: str
) -> None:
    with pytest.raises(InvalidRequest) as too_many:
        await collect(tiny_backend, model, make_job(max_tokens=1020))
    assert too_many.value.param == "max_tokens"
    assert too_many.value.code == "context_length_exceeded"
    with pytest.raises(InvalidRequest) as too_long:
        await collect(tiny_backend, model, make_job("word " * 1100))
    assert too_long.value.param == "messages"
    assert tiny_backend.engine_stats(model).prefills == 0


async def test_more_than_one_choice_is_refused(
    tiny_backend: TransformersBackend, model: str
) -> None:
    with pytest.raises(InvalidRequest):
        await collect(tiny_backend, model, make_job(n=2))


async def test_unknown_engine_model_is_a_backend_error(
    tiny_backend: TransformersBackend,
) -> None:
    with pytest.raises(BackendError):
        await collect(tiny_backend, "not-loaded", make_job())


async def test_close_ends_running_jobs_with_backend_error(
    tiny_backend: TransformersBackend, model: str
) -> None:
    stream = tiny_backend.generate(make_job(temperature=0, max_tokens=900), model)
    await anext(stream)
    await tiny_backend.close()
    with pytest.raises(BackendError):
        async for _ in stream:
            pass


def test_tools_are_offered_in_the_prompt(tiny_model_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    call = {"id": "call_1", "type": "function"}
    call["function"] = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    request = ChatCompletionRequest(
        model="tiny",
        tools=TOOLS,
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
    )
    prompt = tokenizer.decode(render_prompt(tokenizer, request))
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert '"name": "get_weather", "description": "Weather in a city."' in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n' in prompt
    assert "<tool_response>\nsunny\n</tool_response>" in prompt


async def test_requests_with_tools_run(tiny_backend: TransformersBackend, model: str) -> None:
    with_tools = await collect(tiny_backend, model, make_job(tools=TOOLS, max_tokens=8))
    without = await collect(tiny_backend, model, make_job(max_tokens=8))
    # The tiny model has random weights and samples: it may end (EOS) before 8 tokens.
    last = with_tools[-1]
    assert last.finish_reason in ("length", "tool_calls", "stop")
    assert 1 <= last.usage.completion_tokens <= 8
    assert last.finish_reason != "length" or last.usage.completion_tokens == 8
    assert last.usage.prompt_tokens > without[-1].usage.prompt_tokens  # the tools are in it


async def feed(events: list[EngineEvent], *, parse_tools: bool) -> list[GenerationChunk]:
    queue: asyncio.Queue[EngineEvent] = asyncio.Queue()
    for event in events:
        queue.put_nowait(event)
    return [chunk async for chunk in stream_chunks(queue, parse_tools=parse_tools)]


async def test_tool_calls_in_the_output_become_tool_call_deltas() -> None:
    pieces = ["Checking", ". <tool", '_call>\n{"name": "get_weather", ', '"arguments": {"city": ']
    pieces += ['"Paris"}}\n</tool_call>']
    events: list[EngineEvent] = [TextDelta(piece) for piece in pieces]
    chunks = await feed([*events, Finished("stop", 10, 20)], parse_tools=True)
    assert text_of(chunks) == "Checking. "
    [calls] = [chunk.tool_calls for chunk in chunks if chunk.tool_calls]
    [delta] = calls
    assert delta.index == 0 and delta.type == "function" and delta.id.startswith("call_")
    assert delta.function.name == "get_weather"
    assert delta.function.arguments == '{"city": "Paris"}'
    assert chunks[-1].finish_reason == "tool_calls"
    assert chunks[-1].usage.total_tokens == 30


async def test_tool_markup_is_plain_text_without_tools_or_when_malformed() -> None:
    events: list[EngineEvent] = [TextDelta("<tool_call>{oops</tool_call>"), Finished("stop", 1, 2)]
    for parse_tools in (False, True):
        chunks = await feed(events, parse_tools=parse_tools)
        assert text_of(chunks) == "<tool_call>{oops</tool_call>"
        assert chunks[-1].finish_reason == "stop"
        assert not any(chunk.tool_calls for chunk in chunks)
