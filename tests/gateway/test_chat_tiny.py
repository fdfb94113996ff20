"""The embedded default: the tiny local model on the transformers engine, through the gateway."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.support.gateway import RunningGateway

HELLO = [{"role": "user", "content": "Hello, who are you?"}]


def test_tiny_model_is_listed_and_available(tiny_gateway: RunningGateway) -> None:
    model = tiny_gateway.client().models.retrieve("infermesh-tiny")
    extra = model.model_extra or {}
    assert extra["available"] is True
    assert extra["capabilities"]["tools"] is True


def test_chat_with_the_tiny_model(tiny_gateway: RunningGateway) -> None:
    response = tiny_gateway.client().chat.completions.create(
        model="infermesh-tiny", messages=HELLO, max_tokens=12, temperature=0
    )
    choice = response.choices[0]
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason in {"stop", "length"}
    assert response.usage is not None
    assert response.usage.prompt_tokens > 5
    assert 1 <= response.usage.completion_tokens <= 12
    assert response.metadata == {"node_id": "local"}


def test_stream_with_the_tiny_model(tiny_gateway: RunningGateway) -> None:
    client = tiny_gateway.client()
    stream = client.chat.completions.create(
        model="infermesh-tiny",
        messages=HELLO,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices]
    content_chunks = [delta for delta in deltas if delta]
    assert len(content_chunks) >= 2
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens <= 10
    whole = client.chat.completions.create(
        model="infermesh-tiny", messages=HELLO, max_tokens=10, temperature=0
    )
    assert "".join(content_chunks) == whole.choices[0].message.content


def test_seeded_sampling_is_reproducible_through_the_api(tiny_gateway: RunningGateway) -> None:
    client = tiny_gateway.client()

    def sample(seed: int) -> str | None:
        response = client.chat.completions.create(
            model="infermesh-tiny", messages=HELLO, max_tokens=16, temperature=1.0, seed=seed
        )
        return response.choices[0].message.content

    assert sample(1234) == sample(1234)


def test_concurrent_requests_all_succeed(tiny_gateway: RunningGateway) -> None:
    client = tiny_gateway.client()

    def ask(index: int) -> int:
        response = client.chat.completions.create(
            model="infermesh-tiny",
            messages=[{"role": "user", "content": f"request number {index}"}],
            max_tokens=8,
            temperature=0,
        )
        assert response.usage is not None
        return response.usage.completion_tokens

    with ThreadPoolExecutor(max_workers=6) as pool:
        counts = list(pool.map(ask, range(6)))
    assert all(1 <= count <= 8 for count in counts)
