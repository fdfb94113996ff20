"""The batched engine's parts: sampling, incremental text, stop strings, and its thread."""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from infermesh.errors import BackendError
from infermesh.worker.engine import (
    Engine,
    EngineEvent,
    EngineRequest,
    Failed,
    Finished,
    SamplingParams,
    TextDelta,
)
from infermesh.worker.engine.sampling import (
    apply_penalties,
    choose_token,
    make_generator,
    nucleus_filter,
)
from infermesh.worker.engine.text import IncrementalDecoder, StopStringGuard


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.fixture
def engine(tiny_model_path: Path, tokenizer: Any) -> Any:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    engine = Engine(model, tokenizer, eos_token_ids=[model.generation_config.eos_token_id])
    engine.start()
    yield engine
    engine.close()


def test_penalties_follow_openais_formula() -> None:
    logits = torch.zeros(3)
    counts = torch.tensor([0.0, 2.0, 1.0])
    params = SamplingParams(frequency_penalty=0.5, presence_penalty=1.0)
    assert apply_penalties(logits, counts, params).tolist() == [0.0, -2.0, -1.5]


def test_nucleus_keeps_the_smallest_set_reaching_top_p() -> None:
    logits = torch.tensor([0.5, 0.3, 0.2]).log()
    assert torch.isfinite(nucleus_filter(logits, 0.6)).tolist() == [True, True, False]
    assert torch.isfinite(nucleus_filter(logits, 0.5)).tolist() == [True, False, False]
    assert torch.isfinite(nucleus_filter(logits, 0.0)).tolist() == [True, False, False]


def test_greedy_and_seeded_choices() -> None:
    logits = torch.randn(50)
    greedy = SamplingParams(temperature=0.0)
    assert choose_token(logits, greedy, make_generator(None, torch.device("cpu"))) == int(
        logits.argmax()
    )
    sampled = SamplingParams(temperature=1.5, seed=3)
    first = [choose_token(logits, sampled, make_generator(3, torch.device("cpu")))]
    again = [choose_token(logits, sampled, make_generator(3, torch.device("cpu")))]
    assert first == again


def test_incremental_decoding_keeps_characters_whole(tokenizer: Any) -> None:
    text = "café 日本語 🚀 naïve ελληνικά"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text.split())  # some characters take several tokens
    decoder = IncrementalDecoder(tokenizer)
    deltas = [decoder.push(token) for token in ids]
    assert all("\ufffd" not in delta for delta in deltas)
    assert "".join(deltas) + decoder.flush() == text


def test_stop_string_split_across_pieces() -> None:
    guard = StopStringGuard(["STOP", "never"])
    assert guard.push("Hel") == ("Hel", False)
    assert guard.push("lo ST") == ("lo ", False)
    assert guard.push("OP there") == ("", True)


def test_stop_guard_releases_false_alarms_and_picks_the_earliest() -> None:
    guard = StopStringGuard(["STOP"])
    assert guard.push("a ST") == ("a ", False)
    assert guard.push("ART") == ("START", False)
    assert guard.push("x S") == ("x ", False)
    assert guard.flush() == "S"
    earliest = StopStringGuard(["bc", "ab"])
    assert earliest.push("xabc") == ("x", True)


def collect_events(engine: Engine, request_id: str, prompt: list[int], **options: Any) -> list[Any]:
    events: queue.Queue[EngineEvent] = queue.Queue()
    engine.submit(EngineRequest(request_id, prompt, emit=events.put, **options))
    collected: list[EngineEvent] = []
    while not collected or isinstance(collected[-1], TextDelta):
        collected.append(events.get(timeout=30))
    return collected


def test_a_failing_request_does_not_stop_the_engine(engine: Engine, tokenizer: Any) -> None:
    [failed] = collect_events(engine, "bad", [len(tokenizer) + 100], max_new_tokens=5)
    assert isinstance(failed, Failed)
    assert isinstance(failed.error, BackendError)
    prompt = tokenizer("Hello", add_special_tokens=False)["input_ids"]
    events = collect_events(engine, "good", prompt, max_new_tokens=5)
    assert events[-1] == Finished("length", len(prompt), 5)
    assert engine.stats.snapshot().failed == 1


def test_closing_fails_what_is_running(engine: Engine, tokenizer: Any) -> None:
    events: queue.Queue[EngineEvent] = queue.Queue()
    prompt = tokenizer("Hello", add_special_tokens=False)["input_ids"]
    engine.submit(EngineRequest("long", prompt, max_new_tokens=900, emit=events.put))
    assert isinstance(events.get(timeout=30), TextDelta)
    engine.close()
    while isinstance(event := events.get(timeout=30), TextDelta):
        pass
    assert isinstance(event, Failed)
    with pytest.raises(BackendError):
        engine.submit(EngineRequest("late", prompt, max_new_tokens=1, emit=events.put))
