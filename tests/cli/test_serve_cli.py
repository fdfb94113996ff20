"""``infermesh serve`` as a new user runs it: first key printed once, then the openai SDK."""

from __future__ import annotations

import re
from pathlib import Path

from openai import OpenAI

from tests.support.gateway import wait_until_available
from tests.support.processes import run_infermesh
from tests.support.servers import free_port

KEY = re.compile(r"sk-im-[A-Za-z0-9_-]{20,}")


def test_serve_quickstart_on_an_empty_data_dir(tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "data"
    with run_infermesh("serve", "--data-dir", str(data_dir), "--port", str(port)) as server:
        key_line = server.wait_for_line("sk-im-")
        key = KEY.search(key_line)
        assert key is not None, key_line
        base_url = f"http://127.0.0.1:{port}"
        server.wait_for_line(f"{base_url}/v1")
        wait_until_available(base_url, ["infermesh-tiny"])
        client = OpenAI(base_url=f"{base_url}/v1", api_key=key.group(0), max_retries=0)
        response = client.chat.completions.create(
            model="infermesh-tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=5
        )
        assert response.choices[0].message.content
        chunks = list(
            client.chat.completions.create(
                model="infermesh-tiny",
                messages=[{"role": "user", "content": "Hello"}],
                max_tokens=5,
                stream=True,
            )
        )
        assert chunks[-1].choices[0].finish_reason in {"stop", "length"}
        server.wait_for_line("route=/v1/chat/completions")
    assert (data_dir / "infermesh.db").exists()
    assert (data_dir / "models.toml").exists()
    assert (data_dir / "models" / "infermesh-tiny" / "config.json").exists()
    assert key.group(0) not in server.output.replace(key_line, "")

    second_port = free_port()
    with run_infermesh("serve", "--data-dir", str(data_dir), "--port", str(second_port)) as again:
        again.wait_for_line(f"http://127.0.0.1:{second_port}/v1")
        wait_until_available(f"http://127.0.0.1:{second_port}", ["infermesh-tiny"])
    assert "sk-im-" not in again.output
