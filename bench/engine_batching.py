"""Throughput of the transformers engine: N requests one after another vs all at once.

Run: python bench/engine_batching.py [--requests 8] [--max-tokens 64] [--model PATH]
(default model: the tiny local model, built under a temporary directory). Both runs
happen in one process, one after the other, so their ratio is comparable; absolute
numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from infermesh.protocol.chat import ChatCompletionRequest
from infermesh.protocol.generation import GenerationJob
from infermesh.worker.backends.transformers import TransformersBackend
from infermesh.worker.tiny import ensure_tiny_model


def job(index: int, max_tokens: int) -> GenerationJob:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "bench",
            "messages": [{"role": "user", "content": f"Tell me a story, number {index}."}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
    )
    return GenerationJob(id=f"bench-{index}", model="bench", request=request)


async def run_one(backend: TransformersBackend, engine_model: str, item: GenerationJob) -> int:
    tokens = 0
    async for chunk in backend.generate(item, engine_model):
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return tokens


async def bench(engine_model: str, requests: int, max_tokens: int, max_batch: int) -> None:
    backend = TransformersBackend([engine_model], max_batch_size=max_batch)
    await backend.start()
    try:
        await run_one(backend, engine_model, job(-1, 8))  # warm-up
        started = time.perf_counter()
        sequential = [
            await run_one(backend, engine_model, job(i, max_tokens)) for i in range(requests)
        ]
        sequential_s = time.perf_counter() - started
        started = time.perf_counter()
        concurrent = await asyncio.gather(
            *(run_one(backend, engine_model, job(i, max_tokens)) for i in range(requests))
        )
        concurrent_s = time.perf_counter() - started
        stats = backend.engine_stats(engine_model)
    finally:
        await backend.close()
    seq_rate = sum(sequential) / sequential_s
    con_rate = sum(concurrent) / concurrent_s
    print(f"requests={requests} max_tokens={max_tokens} max_batch={max_batch}")
    print(f"one at a time: {sum(sequential)} tokens in {sequential_s:.2f}s = {seq_rate:.0f} tok/s")
    print(f"all at once:   {sum(concurrent)} tokens in {concurrent_s:.2f}s = {con_rate:.0f} tok/s")
    print(f"speed-up: {con_rate / seq_rate:.2f}x")
    print(f"largest batch in a decode step: {stats.max_batch_size}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--model", help="path or hub id (default: the tiny local model)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or str(ensure_tiny_model(Path(scratch)))
        asyncio.run(bench(model, args.requests, args.max_tokens, args.max_batch))


if __name__ == "__main__":
    main()
