"""``infermesh models``: the catalog file, and the gateway serving what it lists."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from tests.support.processes import infermesh as run_infermesh


def test_models_add_list_remove(tmp_path: Path, clean_env: dict[str, str]) -> None:
    infermesh = partial(run_infermesh, env=clean_env)
    data = ["--data-dir", str(tmp_path)]
    listed = infermesh("models", "list", "--json", *data)
    assert listed.returncode == 0, listed.stderr
    default = ["infermesh-tiny", "infermesh-tiny-embed"]
    assert [model["id"] for model in json.loads(listed.stdout)] == default

    added = infermesh(
        "models", "add", "qwen2.5-7b", "--backend", "openai",
        "--upstream-url", "http://127.0.0.1:8001/v1", "--engine-model", "Qwen/Qwen2.5-7B-Instruct",
        "--upstream-key-env", "VLLM_KEY", "--tier", "fast", "--params", "7B",
        "--context-length", "32768", "--tools", *data,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    models = {
        model["id"]: model
        for model in json.loads(infermesh("models", "list", "--json", *data).stdout)
    }
    assert set(models) == {*default, "qwen2.5-7b"}
    qwen = models["qwen2.5-7b"]
    assert qwen["capabilities"] == {"tools": True, "vision": False}
    assert qwen["serve"] == {
        "backend": "openai",
        "engine_model": "Qwen/Qwen2.5-7B-Instruct",
        "upstream_url": "http://127.0.0.1:8001/v1",
        "upstream_key_env": "VLLM_KEY",
    }
    table = infermesh("models", "list", *data)
    assert "qwen2.5-7b" in table.stdout

    duplicate = infermesh("models", "add", "qwen2.5-7b", *data)
    assert duplicate.returncode == 1
    assert "already in the catalog" in duplicate.stderr
    no_url = infermesh("models", "add", "broken", "--backend", "openai", *data)
    assert no_url.returncode == 1
    assert "upstream_url" in no_url.stderr

    embedder = infermesh(
        "models", "add", "bge-small", "--kind", "embedding", "--dimensions", "384",
        "--context-length", "512", "--price-input", "0.02", *data,
    )  # fmt: skip
    assert embedder.returncode == 0, embedder.stderr
    listed_models = json.loads(infermesh("models", "list", "--json", *data).stdout)
    bge = next(model for model in listed_models if model["id"] == "bge-small")
    assert (bge["kind"], bge["dimensions"]) == ("embedding", 384)
    no_dimensions = infermesh("models", "add", "e5", "--kind", "embedding", *data)
    assert no_dimensions.returncode == 1 and "--dimensions" in no_dimensions.stderr

    assert infermesh("models", "remove", "qwen2.5-7b", *data).returncode == 0
    missing = infermesh("models", "remove", "qwen2.5-7b", *data)
    assert missing.returncode == 1
    assert "not in the catalog" in missing.stderr
