"""The engine under hostile input: degenerate sampling, one sequence failing in a batch."""

from __future__ import annotations

import asyncio
import math
import queue
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from infermesh.errors import InvalidRequest
from infermesh.protocol.chat import ChatCompletionRequest
from infermesh.protocol.generation import GenerationJob
from infermesh.protocol.json_depth import MAX_JSON_DEPTH
from infermesh.worker.backends.transformers import TransformersBackend
from infermesh.worker.engine import (
    Engine,
    EngineEvent,
    EngineRequest,
    Failed,
    Finished,
    SamplingParams,
    TextDelta,
    render_prompt,
)
from infermesh.worker.engine.sampling import choose_token, make_generator

TINY_TEMPERATURE = 1e-38


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model_path)


def start_engine(model: Any, tokenizer: Any) -> Engine:
    """An engine without end-of-turn ids: every answer runs to its token limit."""
    engine = Engine(model.eval(), tokenizer, eos_token_ids=[], max_batch_size=8)
    engine.start()
    return engine


@pytest.fixture
def engine(tiny_model_path: Path, tokenizer: Any) -> Iterator[Engine]:
    engine = start_engine(AutoModelForCausalLM.from_pretrained(tiny_model_path), tokenizer)
    yield engine
    engine.close()


@dataclass
class Answer:
    """The events of one request, gathered from the engine's thread."""

    events: queue.Queue[EngineEvent] = field(default_factory=queue.Queue)
    received: list[EngineEvent] = field(default_factory=list)

    def next_event(self) -> EngineEvent:
        self.received.append(self.events.get(timeout=60))
        return self.received[-1]

    def wait_end(self) -> EngineEvent:
        while not self.received or isinstance(self.received[-1], TextDelta):
            self.next_event()
        return self.received[-1]

    @property
    def text(self) -> str:
        return "".join(event.text for event in self.received if isinstance(event, TextDelta))


def submit(engine: Engine, request_id: str, prompt: list[int], **options: Any) -> Answer:
    answer = Answer()
    engine.submit(EngineRequest(request_id, prompt, emit=answer.events.put, **options))
    return answer


def prompt_of(tokenizer: Any, text: str) -> list[int]:
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=TINY_TEMPERATURE),
        SamplingParams(temperature=5e-324),
        SamplingParams(temperature=-1.0),
        SamplingParams(temperature=math.nan),
    ],
)
def test_a_vanishing_temperature_is_greedy(params: SamplingParams) -> None:
    logits = torch.randn(64) * 30
    assert params.greedy
    generator = make_generator(7, torch.device("cpu"))
    assert choose_token(logits, params, generator) == int(logits.argmax())


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(top_p=0.0),
        SamplingParams(top_p=-0.5),
        SamplingParams(top_p=math.nan),
        SamplingParams(top_p=1e-30, temperature=1e-3),
        SamplingParams(temperature=math.inf),
        SamplingParams(frequency_penalty=math.inf, presence_penalty=-math.inf),
        SamplingParams(frequency_penalty=math.nan),
    ],
)
def test_degenerate_knobs_still_choose_a_token(params: SamplingParams) -> None:
    logits = torch.randn(64)
    counts = torch.zeros(64)
    counts[3] = 2
    generator = make_generator(7, torch.device("cpu"))
    token = choose_token(logits, params, generator, counts)
    assert 0 <= token < 64


@pytest.mark.parametrize(("poison", "best"), [(math.nan, 1), (math.inf, 2)])
def test_a_row_without_a_distribution_falls_back_to_its_best_score(
    poison: float, best: int
) -> None:
    logits = torch.tensor([0.5, 3.0, poison, 1.0])
    generator = make_generator(1, torch.device("cpu"))
    assert choose_token(logits, SamplingParams(temperature=0.7), generator) == best
    all_poisoned = torch.full((4,), poison)
    assert 0 <= choose_token(all_poisoned, SamplingParams(), generator) < 4


def test_a_masked_token_is_never_sampled() -> None:
    logits = torch.tensor([0.5, 3.0, -math.inf, 1.0])
    generator = make_generator(1, torch.device("cpu"))
    chosen = {choose_token(logits, SamplingParams(temperature=2.0), generator) for _ in range(200)}
    assert chosen == {0, 1, 3}


def test_a_vanishing_temperature_next_to_another_request_in_one_batch(
    engine: Engine, tokenizer: Any
) -> None:
    prompt = prompt_of(tokenizer, "Tell me a story about a dragon.")
    greedy = submit(engine, "greedy", prompt, max_new_tokens=24, sampling=SamplingParams(0.0))
    greedy.wait_end()
    steady = submit(engine, "steady", prompt_of(tokenizer, "Hello"), max_new_tokens=40)
    steady.next_event()  # it runs: the next request joins its batch
    tiny = SamplingParams(temperature=TINY_TEMPERATURE)
    cold = submit(engine, "cold", prompt, max_new_tokens=24, sampling=tiny)
    assert cold.wait_end() == Finished("length", len(prompt), 24)
    assert steady.wait_end() == Finished("length", len(prompt_of(tokenizer, "Hello")), 40)
    assert cold.text == greedy.text
    stats = engine.stats.snapshot()
    assert stats.max_batch_size == 2
    assert (stats.completed, stats.failed) == (3, 0)


async def test_a_vanishing_temperature_through_the_backend(
    tiny_backend: TransformersBackend, tiny_model_path: Path
) -> None:
    def job(temperature: float) -> GenerationJob:
        request = ChatCompletionRequest(
            model="tiny",
            messages=[{"role": "user", "content": "Hello there"}],
            temperature=temperature,
            max_tokens=16,
        )
        return GenerationJob(id=f"job-{temperature}", model="tiny", request=request)

    async def answer(one: GenerationJob) -> str:
        chunks = [chunk async for chunk in tiny_backend.generate(one, str(tiny_model_path))]
        return "".join(chunk.content or "" for chunk in chunks)

    greedy, cold, warm = await asyncio.gather(
        answer(job(0.0)), answer(job(TINY_TEMPERATURE)), answer(job(1.0))
    )
    assert cold == greedy
    assert warm
    assert tiny_backend.engine_stats(str(tiny_model_path)).failed == 0


PADDED_IDS = 1024


class SentencePieceLikeTokenizer:
    """The tiny tokenizer, failing as sentencepiece does on an id past its vocabulary.

    Many checkpoints pad their output layer beyond the tokenizer (Qwen2.5: 151936 logits
    for 151665 tokens); a slow sentencepiece tokenizer raises ``IndexError`` when asked to
    decode one of those ids. This is the engine's tokenizer, a part from outside the project.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._size = len(tokenizer)

    def decode(self, ids: list[int], **options: Any) -> str:
        if any(token >= self._size for token in ids):
            raise IndexError("piece id is out of range.")
        text: str = self._tokenizer.decode(ids, **options)
        return text


def padded_model(path: Path, tokenizer: Any) -> Any:
    """The tiny model with ``PADDED_IDS`` unused output rows (logit 0) after its vocabulary."""
    model = AutoModelForCausalLM.from_pretrained(path)
    size = len(tokenizer)
    model.resize_token_embeddings(size + PADDED_IDS, mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[size:] = 0
        model.get_output_embeddings().weight[size:] = 0
    return model


def test_a_sequence_that_fails_its_step_fails_alone(tiny_model_path: Path, tokenizer: Any) -> None:
    # Greedy decoding never picks a padded id (logit 0, below the best real one); sampling
    # does, about one token in four, and the tokenizer then raises for that sequence only.
    engine = start_engine(
        padded_model(tiny_model_path, tokenizer), SentencePieceLikeTokenizer(tokenizer)
    )
    try:
        steady_prompt = prompt_of(tokenizer, "Hello")
        steady = submit(
            engine, "steady", steady_prompt, max_new_tokens=48, sampling=SamplingParams(0.0)
        )
        steady.next_event()  # it runs: the sampled requests join its batch
        sampled = [
            submit(
                engine,
                f"sampled-{seed}",
                prompt_of(tokenizer, "Tell me"),
                max_new_tokens=32,
                sampling=SamplingParams(seed=seed),
            )
            for seed in range(1, 8)
        ]
        endings = [answer.wait_end() for answer in sampled]
        assert steady.wait_end() == Finished("length", len(steady_prompt), 48)
    finally:
        engine.close()
    failed = [(a, end) for a, end in zip(sampled, endings, strict=True) if isinstance(end, Failed)]
    assert all("piece id is out of range" in str(end.error) for _, end in failed)
    assert any(answer.text for answer, _ in failed), "no sequence failed in a decode step"
    stats = engine.stats.snapshot()
    assert stats.max_batch_size > 1
    assert (stats.completed, stats.failed) == (len(sampled) + 1 - len(failed), len(failed))


def chat_request(**options: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="tiny", **options)


def nested_schema(levels: int) -> dict[str, Any]:
    """A JSON schema whose object properties nest ``levels`` objects deep."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"inner": schema}}
    return schema


def tool_with(parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "f", "parameters": parameters}}


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, 100_000])
def test_deep_arguments_in_the_history_are_rendered_as_written(tokenizer: Any, depth: int) -> None:
    arguments = "[" * depth + "]" * depth
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    request = chat_request(
        messages=[
            {"role": "user", "content": "Go."},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "done"},
        ]
    )
    prompt = tokenizer.decode(render_prompt(tokenizer, request))
    assert f'{{"name": "f", "arguments": {arguments}}}' in prompt


def test_tools_nested_deeper_than_the_bound_are_refused(tokenizer: Any) -> None:
    fits = chat_request(
        messages=[{"role": "user", "content": "Go."}], tools=[tool_with(nested_schema(20))]
    )
    assert render_prompt(tokenizer, fits)
    deep = tool_with(nested_schema(MAX_JSON_DEPTH))
    request = chat_request(
        messages=[{"role": "user", "content": "Go."}], tools=[tool_with({}), deep]
    )
    with pytest.raises(InvalidRequest, match="nest") as refused:
        render_prompt(tokenizer, request)
    assert refused.value.param == "tools[1]"
