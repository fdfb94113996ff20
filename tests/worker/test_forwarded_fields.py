"""Only OpenAI's fields and the documented engine extras reach an engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from infermesh.chat.validation import engine_request
from infermesh.protocol.chat import ChatCompletionRequest
from infermesh.protocol.engine_fields import ENGINE_EXTRA_FIELDS
from infermesh.protocol.generation import GenerationJob
from infermesh.worker.backends.openai_http import OpenAIBackend
from tests.fakes.engine import ScriptedEngine, run_engine

ALLOWED = {
    "top_k": 20,
    "min_p": 0.05,
    "repetition_penalty": 1.1,
    "logit_bias": {"1234": -100},
    "logprobs": True,
    "top_logprobs": 2,
}
REFUSED = {
    "chat_template": "{{ raise_exception('pwned') }}",
    "chat_template_kwargs": {"enable_thinking": True},
    "priority": -1000,
    "kv_transfer_params": {"do_remote_prefill": True, "remote_host": "10.0.0.1"},
    "store": True,
    "metadata": {"trace": "x"},
    "service_tier": "priority",
    "return_tokens_as_token_ids": True,
    "request_id": "forged",
    "functions": [{"name": "f", "parameters": {}}],
}
MESSAGE_EXTRAS = {"chat_template_kwargs": {"x": 1}, "cache_control": {"type": "ephemeral"}}
PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}}
SCHEMA = {"name": "s", "schema": {"type": "object"}, "x-anything": [1]}


def request_body(*, extras: bool) -> dict[str, Any]:
    """A request; with ``extras``, undeclared fields everywhere, allowed or not."""
    function: dict[str, Any] = {"name": "get_weather", "parameters": PARAMETERS}
    message: dict[str, Any] = {"role": "user", "content": "hello world"}
    if extras:
        function["x-vendor"] = {"kept": False}
        message.update(MESSAGE_EXTRAS)
    return {
        "model": "public-name",
        "messages": [message],
        "temperature": 0.5,
        "tools": [{"type": "function", "function": function}],
        "tool_choice": "none",
        "response_format": {"type": "json_schema", "json_schema": SCHEMA},
        **ALLOWED,
        **(REFUSED if extras else {}),
    }


def request_with_extras() -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(request_body(extras=True))


@pytest.fixture
def engine() -> Iterator[ScriptedEngine]:
    with run_engine() as running:
        yield running


@pytest.fixture
async def backend(engine: ScriptedEngine) -> AsyncIterator[OpenAIBackend]:
    started = OpenAIBackend(engine.base_url)
    await started.start()
    yield started
    await started.close()


def test_the_allow_list_is_documented_sampling_extras() -> None:
    assert set(ALLOWED) <= ENGINE_EXTRA_FIELDS
    assert not set(REFUSED) & ENGINE_EXTRA_FIELDS
    assert not ENGINE_EXTRA_FIELDS & set(ChatCompletionRequest.model_fields)


async def test_the_backend_forwards_only_openai_fields_and_the_allow_list(
    backend: OpenAIBackend, engine: ScriptedEngine
) -> None:
    job = GenerationJob(id="job-1", model="public-name", request=request_with_extras())
    chunks = [chunk async for chunk in backend.generate(job, "scripted-1")]

    assert chunks[-1].finish_reason == "stop"
    received = engine.requests[-1]
    assert {key: received[key] for key in ALLOWED} == ALLOWED
    assert not set(REFUSED) & set(received)
    assert received["temperature"] == 0.5
    assert received["messages"] == [{"role": "user", "content": "hello world"}]
    assert received["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "parameters": PARAMETERS}}
    ]
    assert received["response_format"] == {"type": "json_schema", "json_schema": SCHEMA}
    assert received["stream"] is True


def test_engine_request_drops_extras_off_the_allow_list() -> None:
    original = request_with_extras()
    kept = engine_request(original)

    expected = ChatCompletionRequest.model_validate(request_body(extras=False))
    assert kept == expected
    assert kept.model_fields_set == expected.model_fields_set
    assert kept.model_extra == ALLOWED
    assert kept.messages[0].model_extra == {}
    assert kept.tools is not None and kept.tools[0].function.model_extra == {}
    # the original is left as it was
    assert set(REFUSED) <= set(original.model_extra or {})
    assert original.messages[0].model_extra == MESSAGE_EXTRAS


def test_engine_request_keeps_a_plain_request_as_it_is() -> None:
    plain = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    assert engine_request(plain) == plain
    assert engine_request(plain).model_dump_json(exclude_unset=True) == plain.model_dump_json(
        exclude_unset=True
    )


@pytest.mark.parametrize("name", sorted(ENGINE_EXTRA_FIELDS))
def test_each_allowed_extra_survives_engine_request(name: str) -> None:
    value: Any = ALLOWED.get(name, 1)
    request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], name: value}
    )
    assert (engine_request(request).model_extra or {}) == {name: value}
