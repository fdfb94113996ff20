"""Reading Qwen/Hermes ``<tool_call>`` blocks, whole and while streaming."""

from __future__ import annotations

import json
import time

import pytest

from infermesh.protocol.json_depth import MAX_JSON_DEPTH, structure_nests_deeper_than
from infermesh.worker.toolcalls import (
    ToolCallStream,
    held_back_suffix,
    load_json,
    nests_deeper_than,
    parse_tool_calls,
)

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def test_plain_text_has_no_calls() -> None:
    assert parse_tool_calls("Just words.") == ("Just words.", [])
    assert parse_tool_calls("") == (None, [])


def test_one_call() -> None:
    content, calls = parse_tool_calls(CALL)
    assert content is None
    [call] = calls
    assert call.id.startswith("call_") and len(call.id) > len("call_") + 8
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_content_around_several_calls() -> None:
    second = '<tool_call>{"name": "search", "arguments": {"query": "bread"}}</tool_call>'
    content, calls = parse_tool_calls(f"Let me check.\n{CALL}\n{second}\n")
    assert content == "Let me check."
    assert [call.function.name for call in calls] == ["get_weather", "search"]
    assert len({call.id for call in calls}) == 2


def test_arguments_given_as_a_string_are_kept() -> None:
    _, [call] = parse_tool_calls(
        '<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>'
    )
    assert call.function.arguments == '{"x": 1}'


def test_missing_arguments_are_an_empty_object() -> None:
    _, [call] = parse_tool_calls('<tool_call>{"name": "now"}</tool_call>')
    assert call.function.arguments == "{}"


def test_unclosed_final_call_is_read_when_complete() -> None:
    _, [call] = parse_tool_calls('<tool_call>\n{"name": "f", "arguments": {"a": [1, 2]}}\n')
    assert json.loads(call.function.arguments) == {"a": [1, 2]}


@pytest.mark.parametrize(
    "text",
    [
        "<tool_call>{not json}</tool_call>",
        '<tool_call>["a", "list"]</tool_call>',
        '<tool_call>{"arguments": {}}</tool_call>',
        '<tool_call>{"name": "f", "arguments": {"a": </tool_call>',
        "<tool_call>",
    ],
)
def test_malformed_blocks_are_plain_content(text: str) -> None:
    assert parse_tool_calls(text) == (text, [])


def test_a_malformed_block_does_not_hide_a_good_one() -> None:
    content, calls = parse_tool_calls(f"<tool_call>oops</tool_call>{CALL}")
    assert content == "<tool_call>oops</tool_call>"
    assert [call.function.name for call in calls] == ["get_weather"]


def test_held_back_suffix() -> None:
    assert held_back_suffix("abc <tool", "<tool_call>") == len("<tool")
    assert held_back_suffix("abc <", "<tool_call>") == 1
    assert held_back_suffix("abc", "<tool_call>") == 0
    assert held_back_suffix("x<tool_call>", "<tool_call>") == 0


def feed_all(stream: ToolCallStream, pieces: list[str]) -> list[str]:
    return [stream.feed(piece) for piece in pieces]


def test_stream_passes_plain_text_through() -> None:
    stream = ToolCallStream()
    assert feed_all(stream, ["Hello", " world", "!"]) == ["Hello", " world", "!"]
    assert stream.finish() == ("", [])


def test_stream_holds_back_a_split_opening_tag() -> None:
    stream = ToolCallStream()
    pieces = [
        "Sure. <",
        "tool",
        "_ca",
        'll>{"name": "get_',
        'weather", "arguments": ',
        "{}}</tool",
        "_call>",
    ]
    emitted = feed_all(stream, pieces)
    assert "".join(emitted) == "Sure. "
    assert emitted[0] == "Sure. "
    content, [call] = stream.finish()
    assert content == ""
    assert call.function.name == "get_weather"
    assert call.function.arguments == "{}"


def test_stream_releases_what_only_looked_like_a_tag() -> None:
    stream = ToolCallStream()
    assert feed_all(stream, ["a <to", "ol>", " b"]) == ["a ", "<tool>", " b"]
    assert stream.finish() == ("", [])


def test_stream_ending_inside_a_possible_tag_flushes_it() -> None:
    stream = ToolCallStream()
    assert feed_all(stream, ["2 <", "tool_"]) == ["2 ", ""]
    assert stream.finish() == ("<tool_", [])


def test_stream_gives_malformed_calls_back_as_content() -> None:
    stream = ToolCallStream()
    feed_all(stream, ["Hi ", "<tool_call>{broken", "</tool_call>"])
    assert stream.finish() == ("<tool_call>{broken</tool_call>", [])


def test_stream_keeps_content_after_calls() -> None:
    stream = ToolCallStream()
    feed_all(stream, [CALL, " and done."])
    content, calls = stream.finish()
    assert content == "and done."
    assert len(calls) == 1


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def call_with_arguments(arguments: str) -> str:
    return f'<tool_call>{{"name": "f", "arguments": {arguments}}}</tool_call>'


@pytest.mark.parametrize(
    "text",
    [
        call_with_arguments(nested(100_000)),
        call_with_arguments("[" * 100_000),
        call_with_arguments('{"a": ' * 50_000 + "1" + "}" * 50_000),
        "<tool_call>" + "[" * 100_000,
        call_with_arguments(nested(MAX_JSON_DEPTH)),
    ],
    ids=["arrays", "unclosed", "objects", "unclosed-block", "just-too-deep"],
)
def test_too_deep_json_is_plain_content(text: str) -> None:
    assert parse_tool_calls(text) == (text, [])
    stream = ToolCallStream()
    emitted = "".join(
        stream.feed(text[start : start + 4096]) for start in range(0, len(text), 4096)
    )
    assert emitted + stream.finish()[0] == text
    assert stream.finish() == ("", [])


def test_json_as_deep_as_allowed_is_read() -> None:
    depth = MAX_JSON_DEPTH - 1  # the call's own object is one level
    _, [call] = parse_tool_calls(call_with_arguments(nested(depth)))
    assert call.function.arguments == json.dumps(json.loads(nested(depth)))


def test_brackets_inside_strings_do_not_count() -> None:
    arguments = json.dumps({"code": "[" * 100_000 + '\\"{' * 1000, "list": [[["ok"]]]})
    _, [call] = parse_tool_calls(call_with_arguments(arguments))
    assert json.loads(call.function.arguments) == json.loads(arguments)


def test_nesting_check_on_ten_megabytes_is_quick() -> None:
    flat = "[" + "[], " * 2_500_000 + "[]]"
    deep = nested(5_000_000)
    started = time.perf_counter()
    assert not nests_deeper_than(flat, MAX_JSON_DEPTH)
    assert nests_deeper_than(deep, MAX_JSON_DEPTH)
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("{}", 1),
        ('{"a": [1, {"b": []}]}', 4),
        ('["]]]", "[[[", "\\"[["]', 1),
        ('"unclosed [[[[', 0),
        ("[1, [2, [3", 3),
        ("[[[", 3),
        ("é[🙂, \ud800[]]", 2),
    ],
)
def test_nesting_depth_is_measured_outside_strings(text: str, depth: int) -> None:
    assert not nests_deeper_than(text, depth)
    assert depth == 0 or nests_deeper_than(text, depth - 1)


def test_load_json_refuses_deep_nesting_with_value_error() -> None:
    assert load_json('{"a": [[1]]}') == {"a": [[1]]}
    with pytest.raises(ValueError, match="nested deeper"):
        load_json(nested(100_000))
    with pytest.raises(ValueError, match="nested deeper"):
        load_json(nested(3), max_depth=2)


@pytest.mark.parametrize(
    ("value", "depth"),
    [
        ("text", 0),
        ([], 1),
        ({"a": [1, {"b": "c"}]}, 3),
        ([[], [[[]]], {}], 4),
    ],
)
def test_nesting_of_parsed_data(value: object, depth: int) -> None:
    assert not structure_nests_deeper_than(value, depth)
    assert depth == 0 or structure_nests_deeper_than(value, depth - 1)


def test_nesting_of_very_deep_data_needs_no_recursion() -> None:
    value: list[object] = []
    for _ in range(100_000):
        value = [value]
    assert structure_nests_deeper_than(value, MAX_JSON_DEPTH)
