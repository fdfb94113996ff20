"""Cost of the gateway's own token counts: a prompt bound and an answer's count, per call.

Run: python bench/token_counting.py [--calls 1000] [--model DIR]
(default model: the tiny local model, built under a temporary directory; DIR is any
directory with a tokenizer.json). The request is a typical 1-2 kB chat: a system prompt,
three turns and one tool. The tokenizer's prompt bound is measured three ways: every
request new (nothing in the counter's cache), a conversation (the history was counted on
an earlier turn, the last message is new) and the same request again; the answer is 256
tokens. Each figure is the best of five rounds; absolute numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from infermesh.chat.counting import ByteCounter, TokenizerCounter
from infermesh.protocol.chat import ChatCompletionRequest
from infermesh.worker.tiny import ensure_tiny_model

CONTEXT = 32_768
BUDGET_US = 1000.0
SYSTEM = (
    "You are a helpful assistant for a small bakery. Answer questions about opening hours, "
    "bread, cakes and orders politely and briefly. If a customer wants to order, ask for "
    "the day, the time and what they would like, then call the tool to check the stock."
)
TURNS = [
    "Hello! Are you open on Sunday morning, and do you still have the sourdough bread with "
    "seeds that I bought last week? My family liked it very much.",
    "Good morning! Yes, we are open on Sunday from eight until one. The seeded sourdough is "
    "baked every morning, but it often sells out before ten, so it is best to order it.",
    "Great, then I would like to order two seeded sourdough loaves and six butter croissants "
    "for Sunday at nine. Could you also tell me whether the apple cake contains nuts? My son "
    "is allergic to hazelnuts and almonds, so we need to be careful with everything we buy.",
]
TOOL = {
    "type": "function",
    "function": {
        "name": "check_stock",
        "description": "How many of an item can be ordered for a day.",
        "parameters": {
            "type": "object",
            "properties": {"item": {"type": "string"}, "day": {"type": "string"}},
            "required": ["item", "day"],
        },
    },
}
ANSWER = (
    "Thank you for your order. Two seeded sourdough loaves and six butter croissants will be "
    "ready for you on Sunday at nine. The apple cake is made without nuts, but it is baked "
    "in the same kitchen as our hazelnut tart, so we cannot promise that it is free of traces. "
)


def chat(suffix: str = "", last: str = TURNS[2]) -> ChatCompletionRequest:
    roles = ["user", "assistant", "user"]
    turns = [*TURNS[:2], last]
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM + suffix}]
    messages += [{"role": r, "content": t + suffix} for r, t in zip(roles, turns, strict=True)]
    body = {"model": "bench", "messages": messages, "tools": [TOOL], "max_tokens": 256}
    return ChatCompletionRequest.model_validate(body)


def answer(counter: TokenizerCounter, tokens: int) -> str:
    """English text of exactly ``tokens`` tokens (or as close as whole words allow)."""
    source = ANSWER.split()
    words: list[str] = []
    while (counter.count_text(" ".join(words)) or 0) < tokens:
        words.append(source[len(words) % len(source)])
    return " ".join(words)


def per_call(calls: int, make: Callable[[int], Callable[[], object]], *, rounds: int = 5) -> float:
    """Microseconds per call, the best of ``rounds`` (other work on the machine only slows
    a round down); the calls are built first so only they are timed."""
    best = float("inf")
    for round_ in range(rounds):
        prepared = [make(round_ * (calls + 50) + i) for i in range(calls + 50)]
        for call in prepared[:50]:
            call()
        started = time.perf_counter()
        for call in prepared[50:]:
            call()
        best = min(best, (time.perf_counter() - started) / calls * 1e6)
    return best


def bench(directory: Path, calls: int) -> None:
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    counter = TokenizerCounter(tokenizer, context_length=CONTEXT)
    by_bytes = ByteCounter(context_length=CONTEXT)
    fixed = chat()
    text = answer(counter, 256)
    size = len(fixed.model_dump_json())
    print(
        f"request: {size} bytes, bound {counter.prompt_bound(fixed)} tokens by the tokenizer, "
        f"{by_bytes.prompt_bound(fixed)} by bytes; answer: {len(text)} characters, "
        f"{counter.count_text(text)} tokens"
    )
    results = {
        "ByteCounter.prompt_bound": per_call(calls, lambda i: lambda: by_bytes.prompt_bound(fixed)),
        "TokenizerCounter.prompt_bound, new request": per_call(
            calls, lambda i: _bound(counter, chat(suffix=f" ({i})"))
        ),
        "TokenizerCounter.prompt_bound, conversation": per_call(
            calls, lambda i: _bound(counter, chat(last=f"{TURNS[2]} ({i})"))
        ),
        "TokenizerCounter.prompt_bound, same request": per_call(
            calls, lambda i: _bound(counter, fixed)
        ),
        "ByteCounter.count_text, 256 tokens": per_call(
            calls, lambda i: lambda: by_bytes.count_text(text)
        ),
        "TokenizerCounter.count_text, 256 tokens": per_call(
            calls, lambda i: lambda: counter.count_text(text)
        ),
    }
    for name, micros in results.items():
        share = micros / BUDGET_US
        print(f"{name:>45}: {micros:8.1f} us per call ({share:5.1%} of a 1 ms request budget)")


def _bound(counter: TokenizerCounter, request: ChatCompletionRequest) -> Callable[[], int]:
    return lambda: counter.prompt_bound(request)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--model", type=Path, default=None, help="a directory with tokenizer.json")
    args = parser.parse_args()
    if args.model is not None:
        bench(args.model, args.calls)
        return
    with tempfile.TemporaryDirectory() as scratch:
        bench(ensure_tiny_model(Path(scratch)), args.calls)


if __name__ == "__main__":
    main()
