"""Turning generated tokens into text that is safe to send: whole characters, no stop strings."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from infermesh.worker.toolcalls import held_back_suffix

_REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Decodes one token at a time without breaking characters made of several tokens.

    It decodes a short window of recent tokens and returns only the new part, and waits
    while that part ends in an incomplete UTF-8 sequence.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def push(self, token_id: int) -> str:
        """Add a token; return the text it completes (maybe empty)."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) <= len(prefix_text) or new_text.endswith(_REPLACEMENT):
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return new_text[len(prefix_text) :]

    def flush(self) -> str:
        """The text of tokens still held back, at the end of the generation."""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        return new_text[len(prefix_text) :]

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        text: str = self._tokenizer.decode(ids, skip_special_tokens=True)
        return text


class StopStringGuard:
    """Cuts the text before the first stop string, even one that arrives in pieces.

    Text that could be the start of a stop string is held back until it is clear.
    """

    def __init__(self, stop: Iterable[str]) -> None:
        self._stop = [string for string in stop if string]
        self._pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Add text; return what is safe to emit and whether a stop string was reached."""
        if not self._stop:
            return text, False
        self._pending += text
        hits = [index for index in map(self._pending.find, self._stop) if index >= 0]
        if hits:
            safe = self._pending[: min(hits)]
            self._pending = ""
            return safe, True
        keep = max(held_back_suffix(self._pending, string) for string in self._stop)
        cut = len(self._pending) - keep
        safe, self._pending = self._pending[:cut], self._pending[cut:]
        return safe, False

    def flush(self) -> str:
        """The text held back, when the generation ends for another reason."""
        pending, self._pending = self._pending, ""
        return pending
