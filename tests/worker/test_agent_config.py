"""The worker agent's configuration: the gateway URL, ``--serve`` options, backoff."""

from __future__ import annotations

import random

import pytest

from infermesh.catalog.store import BUILTIN_TINY
from infermesh.errors import ConfigError
from infermesh.worker.agent import connect_url, serve_spec
from infermesh.worker.agent.backoff import Backoff


@pytest.mark.parametrize(
    ("gateway", "url"),
    [
        ("http://127.0.0.1:8000", "ws://127.0.0.1:8000/v1/workers/connect"),
        ("https://gateway.example.com/", "wss://gateway.example.com/v1/workers/connect"),
        ("https://gateway.example.com/v1", "wss://gateway.example.com/v1/workers/connect"),
        ("http://host:1/mesh/v1/", "ws://host:1/mesh/v1/workers/connect"),
        ("wss://host/v1/workers/connect", "wss://host/v1/workers/connect"),
    ],
)
def test_the_connect_url_comes_from_the_gateway_url(gateway: str, url: str) -> None:
    assert connect_url(gateway) == url


@pytest.mark.parametrize("gateway", ["127.0.0.1:8000", "ftp://host", "http://"])
def test_a_gateway_that_is_not_a_url_is_a_config_error(gateway: str) -> None:
    with pytest.raises(ConfigError):
        connect_url(gateway)


def test_serve_options_become_model_specs() -> None:
    tiny = serve_spec("infermesh-tiny", backend="transformers")
    assert tiny.serve is not None and tiny.serve.engine_model == BUILTIN_TINY
    hub = serve_spec("qwen=Qwen/Qwen2.5-0.5B-Instruct", backend="transformers")
    assert hub.id == "qwen" and hub.serve is not None
    assert hub.serve.engine_model == "Qwen/Qwen2.5-0.5B-Instruct"
    upstream = serve_spec("llama", backend="openai", upstream_url="http://engine/v1")
    assert upstream.serve is not None and upstream.serve.engine_model == "llama"
    with pytest.raises(ConfigError, match="upstream_url"):
        serve_spec("llama", backend="openai")
    with pytest.raises(ConfigError):
        serve_spec("bad id!", backend="transformers")


def test_backoff_grows_with_jitter_up_to_a_cap_and_resets() -> None:
    backoff = Backoff(initial=0.5, maximum=8.0, rng=random.Random(7))
    delays = [backoff.next() for _ in range(10)]
    bases = [min(8.0, 0.5 * 2**attempt) for attempt in range(10)]
    assert all(base / 2 <= delay <= base for delay, base in zip(delays, bases, strict=True))
    assert len(set(delays)) == len(delays)
    backoff.reset()
    assert backoff.next() <= 0.5
