"""A batched generation engine for causal LMs loaded with ``transformers``.

:class:`Engine` runs one model on a background thread and steps every running request
together (continuous batching); requests come in as :class:`EngineRequest` and results
go out as :data:`EngineEvent` through the request's callback. Embedding models have
their own, simpler runner: :class:`~infermesh.worker.engine.embedder.Embedder`.
"""

from __future__ import annotations

from infermesh.worker.engine.prompt import render_prompt, sampling_params, uses_tools
from infermesh.worker.engine.sampling import SamplingParams
from infermesh.worker.engine.scheduler import Engine
from infermesh.worker.engine.sequence import (
    EngineEvent,
    EngineRequest,
    EventSink,
    Failed,
    Finished,
    TextDelta,
)
from infermesh.worker.engine.stats import EngineStats, EngineStatsSnapshot

__all__ = [
    "Engine",
    "EngineEvent",
    "EngineRequest",
    "EngineStats",
    "EngineStatsSnapshot",
    "EventSink",
    "Failed",
    "Finished",
    "SamplingParams",
    "TextDelta",
    "render_prompt",
    "sampling_params",
    "uses_tools",
]
