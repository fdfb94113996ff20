"""The running batch: its sequences and one KV cache whose rows are left-padded to a common length.

A newcomer is prefilled on its own and merged in by left-padding either its cache or the
batch's with empty (masked) positions; a finished row is dropped and the columns that
only padding uses any more are cut off. Each row keeps its own position ids, so padding
never shifts a sequence's positions.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache

from infermesh.worker.engine.sequence import Sequence

_KeyValues = list[tuple[torch.Tensor, torch.Tensor]]


def _key_values(cache: DynamicCache) -> _KeyValues:
    layers: list[Any] = cache.layers
    return [(layer.keys, layer.values) for layer in layers]


def _left_pad(tensor: torch.Tensor, columns: int, dim: int) -> torch.Tensor:
    """``tensor`` with ``columns`` zero positions added in front along ``dim``."""
    if columns == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = columns
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class RunningBatch:
    """The sequences being decoded together and their shared, padded KV cache."""

    def __init__(self) -> None:
        self.sequences: list[Sequence] = []
        self.cache: DynamicCache | None = None
        self.attention_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.sequences)

    def add(self, sequence: Sequence, cache: DynamicCache) -> None:
        """Merge a prefilled sequence (a one-row cache over its whole prompt) into the batch."""
        new_kv = _key_values(cache)
        length = new_kv[0][0].shape[-2]
        new_mask = torch.ones((1, length), dtype=torch.long, device=new_kv[0][0].device)
        if self.cache is None or self.attention_mask is None:
            self.sequences, self.cache, self.attention_mask = [sequence], cache, new_mask
            return
        width = max(length, self.attention_mask.shape[1])
        merged = [
            (
                torch.cat([_left_pad(k, width - k.shape[-2], 2), _left_pad(nk, width - length, 2)]),
                torch.cat([_left_pad(v, width - v.shape[-2], 2), _left_pad(nv, width - length, 2)]),
            )
            for (k, v), (nk, nv) in zip(_key_values(self.cache), new_kv, strict=True)
        ]
        old_mask = _left_pad(self.attention_mask, width - self.attention_mask.shape[1], 1)
        self.attention_mask = torch.cat([old_mask, _left_pad(new_mask, width - length, 1)])
        self.cache = DynamicCache(ddp_cache_data=merged)
        self.sequences.append(sequence)

    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Input ids, attention mask (one column longer) and position ids for a decode step."""
        assert self.attention_mask is not None
        device = self.attention_mask.device
        input_ids = torch.tensor([[s.last_token] for s in self.sequences], device=device)
        positions = torch.tensor([[s.cache_length] for s in self.sequences], device=device)
        ones = self.attention_mask.new_ones((len(self.sequences), 1))
        return input_ids, torch.cat([self.attention_mask, ones], dim=1), positions

    def advance(self, attention_mask: torch.Tensor) -> None:
        """Take the mask of the step just run; every row's cache grew by one token."""
        self.attention_mask = attention_mask
        for sequence in self.sequences:
            sequence.cache_length += 1

    def drop_finished(self) -> list[Sequence]:
        """Remove finished sequences from the batch and return them."""
        finished = [s for s in self.sequences if s.finished]
        if finished:
            self.keep([i for i, s in enumerate(self.sequences) if not s.finished])
        return finished

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` of the batch, then trim columns that are padding in every row."""
        if not rows or self.cache is None or self.attention_mask is None:
            self.clear()
            return
        index = torch.tensor(rows, device=self.attention_mask.device)
        mask = self.attention_mask.index_select(0, index)
        start = int(mask.any(dim=0).long().argmax().item())
        self.attention_mask = mask[:, start:]
        self.cache = DynamicCache(
            ddp_cache_data=[
                (k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:])
                for k, v in _key_values(self.cache)
            ]
        )
        self.sequences = [self.sequences[i] for i in rows]

    def clear(self) -> list[Sequence]:
        """Empty the batch; return the sequences it held."""
        sequences = self.sequences
        self.sequences, self.cache, self.attention_mask = [], None, None
        return sequences
