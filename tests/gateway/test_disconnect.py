"""A client that goes away mid-stream stops the work upstream and frees the worker."""

from __future__ import annotations

import time
from pathlib import Path

from tests.fakes.engine import run_engine
from tests.gateway.conftest import engine_specs
from tests.support.gateway import start_gateway


def test_client_disconnect_mid_stream_closes_the_engine_stream(tmp_path: Path) -> None:
    with (
        run_engine(models=["scripted-1"], chunk_delay=0.05) as engine,
        start_gateway(
            tmp_path,
            specs=engine_specs(engine.base_url),
            secrets={"SCRIPTED_ENGINE_KEY": "unused"},
            wait_for=["scripted"],
        ) as gateway,
        gateway.http() as http,
    ):
        words = " ".join(f"w{index}" for index in range(400))
        body = {
            "model": "scripted",
            "messages": [{"role": "user", "content": words}],
            "stream": True,
        }
        with http.stream(
            "POST", "/v1/chat/completions", json=body, headers=gateway.auth()
        ) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))
        assert engine.disconnected.wait(timeout=30), "the engine never saw the disconnect"
        deadline = time.monotonic() + 30
        while gateway.app.state.services.registry.in_flight("local") != 0:
            assert time.monotonic() < deadline, "the worker lease was never released"
            time.sleep(0.02)
