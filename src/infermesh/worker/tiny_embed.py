"""A tiny, randomly initialised embedding model that is built offline in a second.

The counterpart of :mod:`infermesh.worker.tiny` for ``/v1/embeddings``: a two-layer BERT
encoder with seeded random weights and the tiny byte-level BPE tokenizer, saved so that
it loads with ``AutoTokenizer``/``AutoModel`` like any embedding model of the hub. Its
vectors (mean of the last hidden states, normalised) mean nothing, but they are real:
the same text gives the same vector and different texts give different ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infermesh.catalog.store import (
    TINY_EMBED_CONTEXT_LENGTH,
    TINY_EMBED_DIMENSIONS,
    TINY_EMBED_MODEL_ID,
)
from infermesh.worker.tiny import build_once, build_tiny_tokenizer

_SEED = 20240602


def ensure_tiny_embed_model(models_dir: Path) -> Path:
    """Return the path of the tiny embedding model under ``models_dir``, building it on
    first use (see :func:`~infermesh.worker.tiny.build_once`)."""
    return build_once(models_dir, TINY_EMBED_MODEL_ID, _build)


def _build(directory: Path) -> None:
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = None
    tokenizer.model_max_length = TINY_EMBED_CONTEXT_LENGTH
    model = _build_model(tokenizer)
    tokenizer.save_pretrained(directory)
    model.save_pretrained(directory)


def _build_model(tokenizer: Any) -> Any:
    """A two-layer BERT encoder with seeded random weights."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_EMBED_DIMENSIONS,
        intermediate_size=2 * TINY_EMBED_DIMENSIONS,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TINY_EMBED_CONTEXT_LENGTH,
        type_vocab_size=1,
        initializer_range=0.2,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        return BertModel(config)
