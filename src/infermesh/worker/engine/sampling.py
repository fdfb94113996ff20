"""Choosing the next token from a row of logits, as one request asked for it."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch

_SEED_MASK = 0xFFFF_FFFF_FFFF_FFFF

MIN_TEMPERATURE = 1e-4
"""Below this temperature a request decodes greedily.

Dividing logits by a smaller temperature can overflow float32 (``1e-38`` turns a logit
of 4 into ``inf``), and well before that the distribution is one-hot anyway: at
``1e-4`` a logit gap of 0.01 is already a factor of ``e**100``.
"""


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How one request samples: OpenAI's knobs with their defaults filled in.

    A temperature below :data:`MIN_TEMPERATURE` (zero, but also ``1e-38``, a negative
    number or NaN) means greedy decoding; ``seed`` makes sampling repeatable.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        """Whether the most likely token is always taken."""
        return not self.temperature >= MIN_TEMPERATURE

    @property
    def penalised(self) -> bool:
        """Whether frequency or presence penalties change the logits."""
        return self.frequency_penalty != 0.0 or self.presence_penalty != 0.0


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A random generator of one's own: seeded as asked, or from the system's entropy."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed if seed is not None else secrets.randbits(63)) & _SEED_MASK)
    return generator


def apply_penalties(
    logits: torch.Tensor, counts: torch.Tensor, params: SamplingParams
) -> torch.Tensor:
    """OpenAI's formula: ``logit - count * frequency_penalty - (count > 0) * presence_penalty``."""
    return (
        logits
        - counts * params.frequency_penalty
        - (counts > 0).to(logits.dtype) * params.presence_penalty
    )


def nucleus_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``top_p``."""
    sorted_logits, sorted_indices = torch.sort(logits, descending=True)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative - sorted_logits.softmax(dim=-1) >= top_p
    remove_sorted[0] = False
    remove = torch.zeros_like(remove_sorted).scatter(0, sorted_indices, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def choose_token(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator,
    counts: torch.Tensor | None = None,
) -> int:
    """The next token for one sequence from its logits row (shape ``[vocab]``).

    It never raises on odd numbers: a row whose scaled scores give no valid distribution
    (NaN or infinite logits or penalties) falls back to its best finite score.
    """
    scores = logits.float()
    if counts is not None and params.penalised:
        scores = apply_penalties(scores, counts, params)
    if params.greedy:
        return best_token(scores)
    scores = scores / params.temperature
    if params.top_p < 1.0:
        scores = nucleus_filter(scores, params.top_p)
    probabilities = torch.softmax(scores, dim=-1)
    if not _is_distribution(probabilities):
        return best_token(scores)
    return int(torch.multinomial(probabilities, 1, generator=generator).item())


def best_token(scores: torch.Tensor) -> int:
    """The highest score's index; NaN counts as the lowest score, ``+inf`` as the highest."""
    return int(torch.argmax(scores.nan_to_num(nan=float("-inf"))).item())


def _is_distribution(probabilities: torch.Tensor) -> bool:
    """Whether ``torch.multinomial`` accepts the row: finite, non-negative, some mass.

    Checked first: on CUDA a bad row can trip a device-side assert, which leaves the
    device unusable instead of raising an exception one could catch.
    """
    valid = torch.isfinite(probabilities).all() & (probabilities.sum() > 0)
    return bool(valid.item())
