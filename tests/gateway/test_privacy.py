"""Message content is never written to the database or to the logs."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

import pytest

from tests.support.gateway import RunningGateway


def database_bytes(data_dir: Path) -> bytes:
    files = sorted(data_dir.glob("infermesh.db*"))
    assert files, f"no database in {data_dir}"
    return b"".join(path.read_bytes() for path in files)


@pytest.mark.parametrize("gateway_name", ["tiny_gateway", "engine_gateway"])
def test_canary_reaches_neither_database_nor_logs(
    gateway_name: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    gateway: RunningGateway = request.getfixturevalue(gateway_name)
    model = "infermesh-tiny" if gateway_name == "tiny_gateway" else "scripted"
    canary = f"canary-{secrets.token_hex(8)}"
    client = gateway.client()
    caplog.set_level(logging.DEBUG)
    messages = [
        {"role": "system", "content": f"system {canary}"},
        {"role": "user", "content": f"please repeat {canary}"},
    ]
    client.chat.completions.create(model=model, messages=messages, max_tokens=8)
    for _ in client.chat.completions.create(
        model=model, messages=messages, max_tokens=8, stream=True
    ):
        pass
    with gateway.http() as http:  # a refused request carries the canary too
        refused = http.post(
            "/v1/chat/completions",
            headers=gateway.auth(),
            json={"model": model, "messages": messages, "temperature": 7},
        )
    assert refused.status_code == 400

    access_lines = [record for record in caplog.records if record.name == "infermesh.access"]
    assert len(access_lines) >= 3, "the access log must have logged the requests"
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert canary not in logged
    assert canary.encode() not in database_bytes(gateway.settings.data_dir)
