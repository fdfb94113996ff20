"""The tiny model: built once, offline, loadable, with a ChatML template that knows tools."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from infermesh.worker import tiny
from infermesh.worker.tiny import ensure_tiny_model


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model_path)


def test_is_built_once_and_reused(tiny_model_path: Path) -> None:
    config = tiny_model_path / "config.json"
    written = config.stat().st_mtime_ns
    assert ensure_tiny_model(tiny_model_path.parent) == tiny_model_path
    assert config.stat().st_mtime_ns == written
    leftovers = [p.name for p in tiny_model_path.parent.iterdir() if p != tiny_model_path]
    assert leftovers == []


def test_a_failed_build_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(directory: Path) -> None:
        (directory / "config.json").write_text("{}")
        raise RuntimeError("power cut")

    monkeypatch.setattr(tiny, "_build", explode)
    with pytest.raises(RuntimeError, match="power cut"):
        ensure_tiny_model(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_loads_as_a_small_causal_lm(tiny_model_path: Path, tokenizer: Any) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    assert model.config.model_type == "qwen2"
    assert model.config.num_hidden_layers == 2
    assert 1000 <= len(tokenizer) <= 2000
    assert model.config.vocab_size == len(tokenizer)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert model.generation_config.eos_token_id == im_end
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"


@pytest.mark.parametrize(
    "token", ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>", "</tool_call>"]
)
def test_special_tokens_are_single_tokens(tokenizer: Any, token: str) -> None:
    ids = tokenizer(f"a{token}b", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids)[1] == token


def test_tool_call_tags_survive_decoding(tokenizer: Any) -> None:
    text = '<tool_call>{"name": "f"}</tool_call> café 日本語'
    ids = tokenizer(text + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_chat_template_without_tools(tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chat_template_with_tools_calls_and_results(tokenizer: Any) -> None:
    tools = [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": {"type": "object"}},
        }
    ]
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": call}],
        },
        {"role": "tool", "content": "sunny"},
        {"role": "tool", "content": "22C"},
    ]
    prompt = tokenizer.apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=False
    )
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.")
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in prompt
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", '
        '"arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
    ) in prompt
    assert (
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>"
        "\n<tool_response>\n22C\n</tool_response><|im_end|>\n"
    ) in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
