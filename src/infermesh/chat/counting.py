"""The gateway's own token counts: a bound on a prompt and the length of a text.

A worker's usage report is a claim. To bound it by what the gateway saw itself, the
gateway counts with the model's tokenizer when it has one (the ``tokenizer.json`` of a
model served by the transformers engine) and with the request's size in bytes when not.
Nothing here downloads anything: a tokenizer comes from a local directory or the local
Hugging Face cache.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

from infermesh.billing.pricing import (
    MESSAGE_OVERHEAD_TOKENS,
    PROMPT_OVERHEAD_TOKENS,
    TOOLS_OVERHEAD_TOKENS,
    token_bound,
)
from infermesh.catalog.spec import ModelSpec, ServeSpec
from infermesh.catalog.store import BUILTIN_TINY, BUILTIN_TINY_EMBED, TINY_EMBED_MODEL_ID
from infermesh.protocol.chat import ChatCompletionRequest, ChatMessage, ImagePart, Tool, ToolCall
from infermesh.worker.tiny import TINY_MODEL_NAME

if TYPE_CHECKING:
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
CACHE_CHARS = 2_000_000
"""Characters of prompt text whose counts a counter remembers (conversations resend them)."""

Renderings = tuple[str, ...]
"""One piece of a prompt, written each way a chat template may render it."""


class TokenCounter(Protocol):
    """What the gateway can count of a request to one model, without the worker."""

    def prompt_bound(self, request: ChatCompletionRequest) -> int:
        """An upper bound on the prompt tokens an honest engine reports for ``request``."""
        ...

    def count_text(self, text: str) -> int | None:
        """The tokens of ``text`` with the model's tokenizer; None when it is not known."""
        ...


class ByteCounter:
    """The counter of a model whose tokenizer is unknown: a token covers at least a byte."""

    def __init__(self, *, context_length: int) -> None:
        self.context_length = context_length

    def prompt_bound(self, request: ChatCompletionRequest) -> int:
        return token_bound(request, context_length=self.context_length).prompt_tokens

    def count_text(self, text: str) -> int | None:
        return None


class TokenizerCounter:
    """Counts with the model's own tokenizer.

    The prompt bound is the tokens of every text a chat template puts into the prompt
    (each taken in its costliest rendering), plus the template overheads that the byte
    bound allows, and never more than the byte bound. Tokenizing runs without the GIL.
    """

    def __init__(self, tokenizer: Tokenizer, *, context_length: int) -> None:
        tokenizer.no_truncation()  # a tokenizer.json may ask to cut long inputs short
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self.context_length = context_length
        self._cache = _CountCache(max_chars=CACHE_CHARS)

    def prompt_bound(self, request: ChatCompletionRequest) -> int:
        size = PROMPT_OVERHEAD_TOKENS + self._count_pieces(_prompt_pieces(request))
        for message in request.messages:
            size += MESSAGE_OVERHEAD_TOKENS * (1 + len(message.tool_calls or ()))
            if _has_image(message):
                size += self.context_length
        if request.tools:
            size += TOOLS_OVERHEAD_TOKENS
        return min(size, token_bound(request, context_length=self.context_length).prompt_tokens)

    def count_text(self, text: str) -> int | None:
        return self._encode([text])[0]

    def _count_pieces(self, pieces: list[Renderings]) -> int:
        texts = {text for renderings in pieces for text in renderings if text}
        counts = self._cache.lookup(texts)
        missing = [text for text in texts if text not in counts]
        if missing:
            found = dict(zip(missing, self._encode(missing), strict=True))
            self._cache.store(found)
            counts.update(found)
        return sum(max(counts.get(text, 0) for text in renderings) for renderings in pieces)

    def _encode(self, texts: list[str]) -> list[int]:
        encodings = self._tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        return [len(encoding) for encoding in encodings]


class TokenCounters:
    """One counter per catalog model, loaded once (lazily, cached), never raising.

    A model served by the transformers engine is counted with its ``tokenizer.json``
    (from its directory, the tiny model's directory under ``models_dir``, or the local
    Hugging Face cache for a hub id); any other model by bytes. A tokenizer that cannot
    be found or loaded falls back to :class:`ByteCounter` with one warning log. One that
    is not found yet is looked for again on the next call: the in-process worker may
    still be building or downloading it.
    """

    def __init__(self, *, models_dir: Path | None) -> None:
        self._models_dir = models_dir
        self._counters: dict[_CounterKey, TokenCounter] = {}
        self._tokenizers: dict[Path, Tokenizer | None] = {}
        self._warned: set[str] = set()

    def for_model(self, spec: ModelSpec) -> TokenCounter:
        key = _CounterKey.of(spec)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._build(spec, spec.serve)
            if counter is None:  # not found yet: bytes for now, look again next time
                return ByteCounter(context_length=spec.context_length)
            self._counters[key] = counter
        return counter

    def _build(self, spec: ModelSpec, serve: ServeSpec | None) -> TokenCounter | None:
        """The model's counter; None while its tokenizer is not found (try again later)."""
        if serve is None or serve.backend != "transformers":
            return ByteCounter(context_length=spec.context_length)
        try:
            path = self._locate(serve.engine_model)
        except OSError:  # a name the file system refuses (too long, say): not a directory
            path = None
        if path is None:
            self._warn(spec, f"no {TOKENIZER_FILE} found for {serve.engine_model!r}")
            return None
        tokenizer = self._load(path, spec)
        if tokenizer is None:
            return ByteCounter(context_length=spec.context_length)
        return TokenizerCounter(tokenizer, context_length=spec.context_length)

    def _locate(self, engine_model: str) -> Path | None:
        builtin = {BUILTIN_TINY: TINY_MODEL_NAME, BUILTIN_TINY_EMBED: TINY_EMBED_MODEL_ID}
        if engine_model in builtin:
            if self._models_dir is None:
                return None
            directory = self._models_dir / builtin[engine_model]
        else:
            directory = Path(engine_model)
            if not directory.is_dir():
                return _cached_hub_file(engine_model)
        path = directory / TOKENIZER_FILE
        return path if path.is_file() else None

    def _load(self, path: Path, spec: ModelSpec) -> Tokenizer | None:
        if path in self._tokenizers:
            return self._tokenizers[path]
        try:
            from tokenizers import Tokenizer

            tokenizer: Tokenizer | None = Tokenizer.from_file(str(path))
        except Exception as exc:  # a broken or foreign file; the tokenizers library raises any kind
            self._warn(spec, f"cannot load {path}: {exc}")
            tokenizer = None
        self._tokenizers[path] = tokenizer
        return tokenizer

    def _warn(self, spec: ModelSpec, reason: str) -> None:
        if spec.id in self._warned:
            return
        self._warned.add(spec.id)
        logger.warning(
            "model %s: %s; the gateway bounds its token counts by bytes", spec.id, reason
        )


class _CounterKey(NamedTuple):
    """What a model's counter depends on: a catalog edit that changes it makes a new one."""

    model_id: str
    context_length: int
    backend: str
    engine_model: str

    @classmethod
    def of(cls, spec: ModelSpec) -> _CounterKey:
        serve = spec.serve
        if serve is None:
            return cls(spec.id, spec.context_length, "", "")
        return cls(spec.id, spec.context_length, serve.backend, serve.engine_model)


class _CountCache:
    """Token counts of recent texts, least recently used first out; safe across threads."""

    def __init__(self, *, max_chars: int) -> None:
        self._max_chars = max_chars
        self._chars = 0
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def lookup(self, texts: set[str]) -> dict[str, int]:
        with self._lock:
            found = {text: self._counts[text] for text in texts if text in self._counts}
            for text in found:
                self._counts.move_to_end(text)
        return found

    def store(self, counts: dict[str, int]) -> None:
        with self._lock:
            for text, count in counts.items():
                if len(text) > self._max_chars // 8 or text in self._counts:
                    continue
                self._counts[text] = count
                self._chars += len(text)
            while self._chars > self._max_chars:
                evicted, _ = self._counts.popitem(last=False)
                self._chars -= len(evicted)


def _prompt_pieces(request: ChatCompletionRequest) -> list[Renderings]:
    """Every text of ``request`` that a chat template may put into the prompt."""
    pieces: list[Renderings] = []
    for message in request.messages:
        pieces.extend(_message_pieces(message))
    pieces.extend(_tool_renderings(tool) for tool in request.tools or ())
    return pieces


def _message_pieces(message: ChatMessage) -> list[Renderings]:
    pieces: list[Renderings] = [(_content_text(message),)]
    pieces.extend((text,) for text in (message.name, message.tool_call_id) if text)
    for call in message.tool_calls or ():
        pieces.extend(_tool_call_pieces(call))
    return pieces


def _content_text(message: ChatMessage) -> str:
    """The text parts of the content, joined as the engine joins them."""
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    return "\n".join(part.text for part in message.content if not isinstance(part, ImagePart))


def _tool_call_pieces(call: ToolCall) -> list[Renderings]:
    """A call's id and name, and its arguments as sent or re-serialized by ``tojson``."""
    arguments = call.function.arguments
    try:
        renderings: Renderings = (arguments, _tojson(json.loads(arguments)))
    except (ValueError, RecursionError):  # not JSON, or nested too deep to re-serialize
        renderings = (arguments,)
    return [(call.id,), (call.function.name,), renderings]


def _tool_renderings(tool: Tool) -> Renderings:
    """A tool's JSON as templates render it: ``tojson`` plain or indented (Llama 3)."""
    indented = tool.model_dump_json(exclude_none=True, indent=4)  # as json.dumps, but fast
    return (_tojson(tool.model_dump(exclude_none=True)), indented)


def _tojson(data: object) -> str:
    """JSON as the ``tojson`` filter of transformers' chat templates writes it."""
    return json.dumps(data, ensure_ascii=False)


def _has_image(message: ChatMessage) -> bool:
    content = message.content
    return isinstance(content, list) and any(isinstance(part, ImagePart) for part in content)


def _cached_hub_file(repo_id: str) -> Path | None:
    """``tokenizer.json`` of a hub model if the local Hugging Face cache holds it."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, TOKENIZER_FILE)
    except Exception:  # not a valid repository id: it cannot be in the cache either
        return None
    return Path(found) if isinstance(found, str) else None
