"""Pooling as each embedding model was trained: the tiny embedding model with the
sentence-transformers files of CLS, last-token, mean and max pooling, on the transformers
backend, against vectors pooled by hand from its hidden states."""

from __future__ import annotations

import base64
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from infermesh.protocol.embeddings import EmbeddingJob
from infermesh.worker.backends.transformers import TransformersBackend, _model_directory
from infermesh.worker.engine.embedder import Pooling, _pooled, pooling_of
from infermesh.worker.tiny_embed import ensure_tiny_embed_model

TEXTS = [
    "a",
    "Hello! How are you today?",
    "The quick brown fox jumps over the lazy dog, twice, and then once more.",
    "café 東京",
]
MODE_KEYS = {
    "cls": "pooling_mode_cls_token",
    "last": "pooling_mode_lasttoken",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "sqrt": "pooling_mode_mean_sqrt_len_tokens",
}


@pytest.fixture(scope="module")
def tiny_embed_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tiny_embed_model(tmp_path_factory.mktemp("embed-models"))


@pytest.fixture(scope="module")
def hidden_states(tiny_embed_path: Path) -> list[torch.Tensor]:
    """The last hidden states of each text, each run alone (no padding)."""
    model = AutoModel.from_pretrained(tiny_embed_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_embed_path)
    with torch.inference_mode():
        return [
            model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0].float()
            for text in TEXTS
        ]


def by_hand(hidden: torch.Tensor, mode: str) -> np.ndarray[Any, Any]:
    """One text's vector, pooled from its unpadded hidden states (tokens, values)."""
    pooled = {
        "cls": lambda: hidden[0],
        "last": lambda: hidden[-1],
        "mean": lambda: hidden.mean(dim=0),
        "max": lambda: hidden.max(dim=0).values,
    }[mode]()
    vector: np.ndarray[Any, Any] = (pooled / pooled.norm()).numpy()
    return vector


def model_copy(source: Path, target: Path, mode: str | None, *, normalize: bool = True) -> Path:
    """A copy of the tiny model, with sentence-transformers files for ``mode`` (none if
    None) and a Normalize module if ``normalize``."""
    shutil.copytree(source, target)
    if mode is None:
        return target
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
    (target / "modules.json").write_text(json.dumps(modules))
    config: dict[str, Any] = {"word_embedding_dimension": 32}
    config.update({key: name == mode for name, key in MODE_KEYS.items()})
    (target / "1_Pooling").mkdir()
    (target / "1_Pooling" / "config.json").write_text(json.dumps(config))
    return target


async def embed(directory: Path, texts: list[str]) -> np.ndarray[Any, Any]:
    """The vectors of ``texts`` from the transformers backend serving ``directory``, in
    batches (so padded)."""
    backend = TransformersBackend(
        [], embedding_models=[str(directory)], device="cpu", max_batch_size=4
    )
    await backend.start()
    try:
        job = EmbeddingJob(id="e-1", model="m", input=texts)
        rows: dict[int, np.ndarray[Any, Any]] = {}
        async for chunk in backend.embed(job, str(directory)):
            for item in chunk.embeddings or []:
                rows[item.index] = np.frombuffer(base64.b64decode(item.embedding), "<f4")
    finally:
        await backend.close()
    return np.stack([rows[index] for index in range(len(texts))])


@pytest.mark.parametrize("mode", ["cls", "last", "mean", "max"])
async def test_each_pooling_matches_one_done_by_hand(
    tiny_embed_path: Path, hidden_states: list[torch.Tensor], tmp_path: Path, mode: str
) -> None:
    directory = model_copy(tiny_embed_path, tmp_path / mode, mode)
    assert pooling_of(directory) == Pooling(mode)  # type: ignore[arg-type]
    vectors = await embed(directory, TEXTS)  # one batch of four lengths: padded
    expected = np.stack([by_hand(hidden, mode) for hidden in hidden_states])
    assert np.allclose(vectors, expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


async def test_poolings_differ_and_the_default_is_the_mean(
    tiny_embed_path: Path, hidden_states: list[torch.Tensor], tmp_path: Path
) -> None:
    plain = model_copy(tiny_embed_path, tmp_path / "plain", None)
    assert pooling_of(plain) == Pooling("mean", normalize=True)
    vectors = await embed(plain, TEXTS[2:3])
    assert np.allclose(vectors[0], by_hand(hidden_states[2], "mean"), atol=1e-5)
    modes = [by_hand(hidden_states[2], mode) for mode in ("cls", "last", "mean", "max")]
    assert all(not np.allclose(a, b) for i, a in enumerate(modes) for b in modes[i + 1 :])


async def test_vectors_are_unit_length_without_a_normalize_module(
    tiny_embed_path: Path, hidden_states: list[torch.Tensor], tmp_path: Path
) -> None:
    directory = model_copy(tiny_embed_path, tmp_path / "bare", "cls", normalize=False)
    assert pooling_of(directory) == Pooling("cls", normalize=True)
    vectors = await embed(directory, TEXTS)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors[1], by_hand(hidden_states[1], "cls"), atol=1e-5)


@pytest.mark.parametrize("modes", [["sqrt"], ["cls", "mean"], []])
def test_an_unsupported_pooling_falls_back_to_the_mean_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, modes: list[str]
) -> None:
    (tmp_path / "modules.json").write_text(
        json.dumps([{"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}])
    )
    (tmp_path / "1_Pooling").mkdir()
    config = {key: name in modes for name, key in MODE_KEYS.items()}
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.INFO, logger="infermesh.worker.engine.embedder"):
        assert pooling_of(tmp_path) == Pooling("mean")
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unsupported" in warnings[0].getMessage()


@pytest.mark.parametrize(
    "modules", ["not json", '{"a": 1}', "[1, 2]", "[]", '[{"type": "x", "path": "p"}]']
)
def test_unreadable_files_mean_the_default(tmp_path: Path, modules: str) -> None:
    (tmp_path / "modules.json").write_text(modules)
    assert pooling_of(tmp_path) == Pooling()
    assert pooling_of(tmp_path / "absent") == Pooling()
    assert pooling_of(None) == Pooling()


def test_last_and_first_real_tokens_whatever_the_padding_side() -> None:
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    raw = {mode: Pooling(mode, normalize=False) for mode in ("cls", "last", "max", "mean")}
    assert torch.equal(_pooled(hidden, right, raw["last"]), hidden[[0, 1], [2, 4]])
    assert torch.equal(_pooled(hidden, left, raw["last"]), hidden[[0, 1], [4, 4]])
    assert torch.equal(_pooled(hidden, left, raw["cls"]), hidden[[0, 1], [2, 0]])
    assert torch.equal(_pooled(hidden, left, raw["max"])[0], hidden[0, 4])
    assert torch.equal(_pooled(hidden, right, raw["mean"])[0], hidden[0, :3].mean(dim=0))


def test_a_hub_model_is_found_in_the_local_cache_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    snapshot = tmp_path / "models--org--embed" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (tmp_path / "models--org--embed" / "refs").mkdir()
    (tmp_path / "models--org--embed" / "refs" / "main").write_text("0123abcd")
    (snapshot / "modules.json").write_text("[]")
    assert _model_directory("org/embed") == snapshot
    assert _model_directory("org/not-cached") is None
    assert _model_directory(str(tmp_path)) == tmp_path
