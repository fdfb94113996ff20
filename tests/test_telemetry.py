"""The access-log line: ids, counts and timings, as text or JSON."""

from __future__ import annotations

import json

from infermesh.telemetry import Metrics, RequestRecord, format_access_line


def record() -> RequestRecord:
    return RequestRecord(
        request_id="req_1",
        method="POST",
        path="/v1/chat/completions",
        route="/v1/chat/completions",
        status=200,
        key_id="key_abc",
        model="m",
        prompt_tokens=3,
        completion_tokens=4,
        latency_ms=12.345,
        time_to_first_token_ms=1.26,
    )


def test_access_line_as_json_has_every_field_and_no_empty_ones() -> None:
    line = json.loads(format_access_line(record(), as_json=True))
    assert line == {
        "request_id": "req_1",
        "method": "POST",
        "path": "/v1/chat/completions",
        "route": "/v1/chat/completions",
        "status": 200,
        "key_id": "key_abc",
        "model": "m",
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "latency_ms": 12.3,
        "time_to_first_token_ms": 1.3,
    }


def test_access_line_as_text_is_key_value_pairs() -> None:
    line = format_access_line(record(), as_json=False)
    assert line.startswith("request_id=req_1 method=POST ")
    assert "key_id=key_abc" in line
    assert "completion_tokens=4" in line


def test_metrics_count_tokens_by_direction() -> None:
    metrics = Metrics()
    metrics.observe(record())
    text = metrics.render().decode()
    assert 'infermesh_tokens_total{direction="prompt",model="m"} 3.0' in text
    assert 'infermesh_tokens_total{direction="completion",model="m"} 4.0' in text


def test_where_it_failed_names_the_place_and_never_the_message() -> None:
    from infermesh.telemetry import where_it_failed

    def translate_answer() -> None:
        raise ValueError("the answer was: canary-4f1e")

    try:
        translate_answer()
    except ValueError as exc:
        summary = where_it_failed(exc)
    assert summary.startswith("ValueError at ") and summary.endswith(" in translate_answer")
    assert "canary" not in summary
    assert where_it_failed(KeyError("x")) == "KeyError"  # never raised: no frame to name
