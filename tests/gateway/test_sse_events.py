"""Text-only stream chunks are framed from a per-stream template: the events must be
the same JSON as the chunk model serialized whole, whatever the text holds."""

from __future__ import annotations

import json

import pytest

from infermesh.chat.assembly import ResponseIdentity
from infermesh.gateway.routes.chat import _CHUNK_JSON, text_event_of
from infermesh.protocol.chat import ChoiceDelta

TEXTS = [
    "hello",
    "",
    'quotes " and \\ backslashes',
    "new\nlines\r\tand\x00controls\x1f",
    "ünïcödé, 漢字, emoji 🎉, and \u2028 \u2029 separators",
    "infermesh-text-7f3a9c",  # the template's own marker, as text
    "x" * 10_000,
]


@pytest.mark.parametrize("model", ["tiny", 'a "quoted" model', "infermesh-text-7f3a9c"])
def test_a_text_event_is_the_chunk_serialized_whole(model: str) -> None:
    identity = ResponseIdentity(
        completion_id="chatcmpl-1", created=1_700_000_000, model=model, node_id="node-1"
    )
    text_event = text_event_of(identity)
    for text in TEXTS:
        event = text_event(text)
        assert event.startswith(b"data: ") and event.endswith(b"\n\n")
        whole = _CHUNK_JSON.dump_json(identity.chunk(ChoiceDelta(content=text)), exclude_none=True)
        assert json.loads(event[len(b"data: ") : -2]) == json.loads(whole)
