"""The gateway's own token counts: bounds that hold against the real chat template, the
tokenizer's own counts, and the fallback to bytes when no tokenizer is at hand."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from infermesh.catalog.spec import ModelSpec, ServeSpec
from infermesh.catalog.store import BUILTIN_TINY
from infermesh.chat.counting import (
    ByteCounter,
    TokenCounters,
    TokenizerCounter,
    _CountCache,
)
from infermesh.protocol.chat import ChatCompletionRequest
from infermesh.worker.engine import render_prompt
from infermesh.worker.tiny import TINY_MODEL_NAME, ensure_tiny_model

CONTEXT = 32_768
LOGGER = "infermesh.chat.counting"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Søg efter opskrifter — recherche de recettes 🍞",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    },
}
ENGLISH = (
    "Please read the following notes about our team meeting and write a short summary for "
    "the people who could not attend. We talked about the new release, which is planned for "
    "the end of the month. The testing team found a few problems with the login page and the "
    "search results, and the developers have already started to fix them. Sarah will write "
    "the release notes, and Tom will update the documentation on the website. We also agreed "
    "to meet every Tuesday morning at ten until the release is out. Finally, everyone thanked "
    "Anna for her work on the new design, which our customers like very much. "
)


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


REQUESTS: dict[str, dict[str, Any]] = {
    "plain": {"messages": [{"role": "user", "content": "Hello, how are you today?"}]},
    "unicode and emoji": {
        "messages": [
            {"role": "user", "content": "東京の天気は? 🌧️☔ Ünïcödé straße — ελληνικά 👩‍👩‍👧‍👦 🇫🇷"},
        ]
    },
    "turns": {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "  leading and trailing spaces  "},
            {"role": "assistant", "content": "\n\nnewlines\n\n", "name": "bot"},
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": "text with <|im_end|> and <tool_call> inside"},
        ]
    },
    "text parts": {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "First part."},
                    {"type": "text", "text": " second part "},
                ],
            }
        ]
    },
    "tool calls and tools": {
        "messages": [
            {"role": "system", "content": "Use the tools."},
            {"role": "user", "content": "Weather in Paris and Oslo, and a bread recipe?"},
            {
                "role": "assistant",
                "content": "Let me look these up.",
                "tool_calls": [
                    call("call_1", "get_weather", '{"city":"Paris","unit":"celsius"}'),
                    call("call_2", "get_weather", '{"city": "Oslo"}'),
                    call("call_3", "search", '{"query":"pain au levain \\u00e9"}'),
                    call("call_4", "search", "not json at all"),
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 22C"},
            {"role": "tool", "tool_call_id": "call_2", "content": "snow, -3C"},
            {"role": "tool", "tool_call_id": "call_3", "content": '{"results": []}'},
        ],
        "tools": [WEATHER_TOOL, SEARCH_TOOL],
    },
    "tools, no system": {
        "messages": [{"role": "user", "content": "What can you do?"}],
        "tools": [WEATHER_TOOL],
    },
    "long english": {"messages": [{"role": "user", "content": ENGLISH * 2}]},
}


def request(body: dict[str, Any]) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", **body})


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tiny_model(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def template_tokenizer(tiny_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture
def counter(tiny_dir: Path) -> TokenizerCounter:
    return TokenizerCounter(
        Tokenizer.from_file(str(tiny_dir / "tokenizer.json")), context_length=CONTEXT
    )


def templated_tokens(tokenizer: Any, chat: ChatCompletionRequest) -> int:
    """The prompt tokens of the real template, given the messages as the client sent them."""
    messages = []
    for message in chat.messages:
        data = message.model_dump(exclude_none=True)
        if isinstance(message.content, list):
            data["content"] = "\n".join(part["text"] for part in data["content"])
        messages.append(data)
    tools = [tool.model_dump(exclude_none=True) for tool in chat.tools or []] or None
    rendered = tokenizer.apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=True
    )
    ids = rendered["input_ids"] if hasattr(rendered, "keys") else rendered
    return len(ids)


@pytest.mark.parametrize("name", list(REQUESTS))
def test_prompt_bound_holds_against_the_real_template(
    name: str, counter: TokenizerCounter, template_tokenizer: Any
) -> None:
    chat = request(REQUESTS[name])
    engine = len(render_prompt(template_tokenizer, chat))  # what our engine reports
    templated = templated_tokens(template_tokenizer, chat)
    bound = counter.prompt_bound(chat)
    assert max(engine, templated) <= bound <= ByteCounter(context_length=CONTEXT).prompt_bound(chat)


def test_prompt_bound_is_much_tighter_than_bytes_for_english(counter: TokenizerCounter) -> None:
    chat = request(
        {
            "messages": [
                {"role": "system", "content": "You write clear and friendly summaries."},
                {"role": "user", "content": ENGLISH * 2},
            ]
        }
    )
    by_bytes = ByteCounter(context_length=CONTEXT).prompt_bound(chat)
    assert counter.prompt_bound(chat) / by_bytes < 0.5  # 1.7 kB: 670 / 1485 tokens, 0.45


def test_prompt_bound_is_the_same_when_counts_come_from_the_cache(
    counter: TokenizerCounter,
) -> None:
    chat = request(REQUESTS["tool calls and tools"])
    first = counter.prompt_bound(chat)
    assert counter.prompt_bound(chat) == first
    longer = request(
        {**REQUESTS["tool calls and tools"], "messages": [*chat.messages, *chat.messages]}
    )
    assert first < counter.prompt_bound(longer) <= 2 * first


def test_arguments_nested_too_deep_to_parse_are_counted_as_sent(
    counter: TokenizerCounter,
) -> None:
    arguments = "[" * 3000 + "]" * 3000
    chat = request(
        {
            "messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "tool_calls": [call("call_1", "f", arguments)]},
            ]
        }
    )
    by_bytes = ByteCounter(context_length=CONTEXT).prompt_bound(chat)
    assert (counter.count_text(arguments) or 0) < counter.prompt_bound(chat) <= by_bytes


def test_an_image_bounds_the_prompt_by_the_context(counter: TokenizerCounter) -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    chat = request({"messages": [{"role": "user", "content": [image]}]})
    assert counter.prompt_bound(chat) == CONTEXT


def test_prompt_bound_never_exceeds_the_context(tiny_dir: Path) -> None:
    tokenizer = Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))
    small = TokenizerCounter(tokenizer, context_length=64)
    assert small.prompt_bound(request(REQUESTS["long english"])) == 64


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("Hello", id="a word"),
        pytest.param(ENGLISH, id="english"),
        pytest.param("café 日本語 🙂🚀", id="unicode"),
        pytest.param("<|im_start|>user\n<tool_call>{}</tool_call>", id="special tokens"),
        pytest.param("  \n\t ", id="whitespace"),
    ],
)
def test_count_text_is_the_tokenizers_count(
    text: str, counter: TokenizerCounter, template_tokenizer: Any
) -> None:
    expected = len(template_tokenizer(text, add_special_tokens=False)["input_ids"])
    assert counter.count_text(text) == expected


def test_count_text_ignores_the_truncation_a_tokenizer_file_asks_for(
    tiny_dir: Path, tmp_path: Path
) -> None:
    tokenizer = Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=8)
    tokenizer.enable_padding(length=600)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    counters = TokenCounters(models_dir=None)
    counter = counters.for_model(transformers_spec(str(tmp_path)))
    assert counter.count_text(ENGLISH) == plain_count(tiny_dir, ENGLISH) > 8


def plain_count(tiny_dir: Path, text: str) -> int:
    """The tokens of ``text`` with the tiny tokenizer, straight from the library."""
    tokenizer = Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def test_the_byte_counter_counts_no_text() -> None:
    counter = ByteCounter(context_length=CONTEXT)
    assert counter.count_text("Hello") is None


# --- which counter a model gets ----------------------------------------------------------


def transformers_spec(engine_model: str, *, model_id: str = "local") -> ModelSpec:
    return ModelSpec(
        id=model_id,
        context_length=CONTEXT,
        serve=ServeSpec(backend="transformers", engine_model=engine_model),
    )


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING
    ]


def test_the_tiny_model_is_counted_with_its_tokenizer_loaded_once(tiny_dir: Path) -> None:
    counters = TokenCounters(models_dir=tiny_dir.parent)
    spec = transformers_spec(BUILTIN_TINY, model_id="infermesh-tiny")
    counter = counters.for_model(spec)
    assert isinstance(counter, TokenizerCounter)
    assert counters.for_model(spec) is counter
    assert counter.count_text("Hello there") == plain_count(tiny_dir, "Hello there")


def test_a_changed_catalog_entry_gets_a_counter_of_its_own(tiny_dir: Path) -> None:
    counters = TokenCounters(models_dir=None)
    spec = transformers_spec(str(tiny_dir))
    smaller = spec.model_copy(update={"context_length": 64})
    assert counters.for_model(smaller) is not counters.for_model(spec)
    assert counters.for_model(smaller).prompt_bound(request(REQUESTS["long english"])) == 64


def test_a_model_directory_is_counted_with_its_tokenizer(tiny_dir: Path) -> None:
    counter = TokenCounters(models_dir=None).for_model(transformers_spec(str(tiny_dir)))
    assert isinstance(counter, TokenizerCounter)


@pytest.mark.parametrize(
    "serve",
    [
        None,
        ServeSpec(backend="openai", engine_model="gpt-x", upstream_url="http://127.0.0.1:9/v1"),
    ],
)
def test_models_without_a_local_engine_are_counted_by_bytes_quietly(
    serve: ServeSpec | None, tiny_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = ModelSpec(id="remote", context_length=CONTEXT, serve=serve)
    counter = TokenCounters(models_dir=tiny_dir.parent).for_model(spec)
    assert isinstance(counter, ByteCounter)
    assert counter.prompt_bound(request(REQUESTS["plain"])) == ByteCounter(
        context_length=CONTEXT
    ).prompt_bound(request(REQUESTS["plain"]))
    assert warnings(caplog) == []


@pytest.mark.parametrize(
    "engine_model",
    [
        pytest.param("/nonexistent/model-dir", id="no such directory"),
        pytest.param(BUILTIN_TINY, id="tiny model without a models directory"),
        pytest.param("infermesh-test/not-in-any-cache", id="hub id not in the cache"),
        pytest.param("not a valid repo id!", id="neither a directory nor a hub id"),
        pytest.param("x" * 5000, id="a name too long for the file system"),
    ],
)
def test_a_missing_tokenizer_falls_back_to_bytes_with_one_warning(
    engine_model: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    counters = TokenCounters(models_dir=None)
    spec = transformers_spec(engine_model)
    assert isinstance(counters.for_model(spec), ByteCounter)
    assert isinstance(counters.for_model(spec), ByteCounter)
    [warning] = warnings(caplog)
    assert "local" in warning and "tokenizer.json" in warning


def test_a_broken_tokenizer_falls_back_to_bytes_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    (tmp_path / "tokenizer.json").write_text('{"not": "a tokenizer"}')
    counters = TokenCounters(models_dir=None)
    spec = transformers_spec(str(tmp_path))
    counter = counters.for_model(spec)
    assert isinstance(counter, ByteCounter)
    assert counters.for_model(spec) is counter
    [warning] = warnings(caplog)
    assert "cannot load" in warning


def test_a_tokenizer_that_appears_later_is_used(tiny_dir: Path, tmp_path: Path) -> None:
    counters = TokenCounters(models_dir=tmp_path)
    spec = transformers_spec(BUILTIN_TINY)
    assert isinstance(counters.for_model(spec), ByteCounter)
    (tmp_path / TINY_MODEL_NAME).mkdir()
    shutil.copy(tiny_dir / "tokenizer.json", tmp_path / TINY_MODEL_NAME / "tokenizer.json")
    assert isinstance(counters.for_model(spec), TokenizerCounter)


def test_a_hub_model_is_found_in_the_local_cache(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--acme--tiny-chat"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    shutil.copy(tiny_dir / "tokenizer.json", repo / "snapshots" / revision / "tokenizer.json")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    counter = TokenCounters(models_dir=None).for_model(transformers_spec("acme/tiny-chat"))
    assert isinstance(counter, TokenizerCounter)


def test_the_count_cache_forgets_the_least_recently_used_first() -> None:
    cache = _CountCache(max_chars=88)
    cache.store({"a" * 10: 1, "b" * 10: 2})
    assert cache.lookup({"a" * 10}) == {"a" * 10: 1}
    cache.store({letter * 10: 3 for letter in "cdefgh"})
    cache.store({"i" * 10: 4})  # 90 > 88 characters: "b", used least recently, goes
    assert cache.lookup({"a" * 10, "b" * 10, "i" * 10}) == {"a" * 10: 1, "i" * 10: 4}
    cache.store({"x" * 12: 5})  # longer than an eighth of the cache: not kept
    assert cache.lookup({"x" * 12}) == {}
