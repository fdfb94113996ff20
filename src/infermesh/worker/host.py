"""A model host: the backends a worker runs, and which catalog model goes to which."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from infermesh.catalog.spec import ModelKind, ModelSpec, ServeSpec
from infermesh.catalog.store import BUILTIN_TINY, BUILTIN_TINY_EMBED
from infermesh.errors import ConfigError, ModelNotFound
from infermesh.protocol.embeddings import EmbeddingJob
from infermesh.protocol.generation import GenerationChunk, WorkerJob
from infermesh.worker.backends.base import Backend

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Route:
    backend: Backend
    engine_model: str
    kind: ModelKind


@dataclass
class HostOptions:
    """How a host builds its engines."""

    models_dir: Path
    max_batch_size: int = 8
    device: str | None = None
    secrets: Mapping[str, str] = field(default_factory=dict)


class ModelHost:
    """Starts the backends for a set of served models and routes jobs to them: a chat
    job to its backend's ``generate``, an embedding job to its ``embed``."""

    def __init__(self, specs: list[ModelSpec], options: HostOptions) -> None:
        self._specs = [spec for spec in specs if spec.serve is not None]
        self._options = options
        self._routes: dict[str, _Route] = {}
        self._backends: list[Backend] = []

    @property
    def model_ids(self) -> list[str]:
        return [spec.id for spec in self._specs]

    def is_ready(self, model: str, kind: str | None = None) -> bool:
        """Whether ``model`` is ready (to serve jobs of ``kind``, if given)."""
        route = self._routes.get(model)
        return route is not None and kind in (None, route.kind)

    async def start(self) -> None:
        """Build and start every backend; models become ready when all have started."""
        routes: dict[str, tuple[tuple[str, ...], str]] = {}
        groups: dict[tuple[str, ...], dict[tuple[str, ModelKind], None]] = {}
        for spec in self._specs:
            assert spec.serve is not None
            engine_model = await self._resolve_engine_model(spec.serve)
            key = self._backend_key(spec.serve)
            groups.setdefault(key, {})[engine_model, spec.kind] = None
            routes[spec.id] = (key, engine_model)
        backends = {key: self._build_backend(key, list(models)) for key, models in groups.items()}
        for backend in backends.values():
            await backend.start()
            self._backends.append(backend)
        kinds = {spec.id: spec.kind for spec in self._specs}
        for model_id, (key, engine_model) in routes.items():
            self._routes[model_id] = _Route(backends[key], engine_model, kinds[model_id])
        logger.info("model host ready: %s", ", ".join(self._routes) or "(no models)")

    async def close(self) -> None:
        self._routes.clear()
        for backend in reversed(self._backends):
            await backend.close()
        self._backends.clear()

    def generate(self, job: WorkerJob) -> AsyncIterator[GenerationChunk]:
        """The chunks of ``job`` (see :class:`~infermesh.worker.backends.base.Backend`)."""
        route = self._routes.get(job.model)
        if route is None or route.kind != job.kind:
            raise ModelNotFound(job.model)
        if isinstance(job, EmbeddingJob):
            return route.backend.embed(job, route.engine_model)
        return route.backend.generate(job, route.engine_model)

    async def _resolve_engine_model(self, serve: ServeSpec) -> str:
        if serve.engine_model == BUILTIN_TINY:
            from infermesh.worker.tiny import ensure_tiny_model

            path = await asyncio.to_thread(ensure_tiny_model, self._options.models_dir)
            return str(path)
        if serve.engine_model == BUILTIN_TINY_EMBED:
            from infermesh.worker.tiny_embed import ensure_tiny_embed_model

            path = await asyncio.to_thread(ensure_tiny_embed_model, self._options.models_dir)
            return str(path)
        return serve.engine_model

    def _backend_key(self, serve: ServeSpec) -> tuple[str, ...]:
        if serve.backend == "transformers":
            return ("transformers",)
        return ("openai", serve.upstream_url or "", serve.upstream_key_env or "")

    def _build_backend(
        self, key: tuple[str, ...], engine_models: list[tuple[str, ModelKind]]
    ) -> Backend:
        if key[0] == "transformers":
            from infermesh.worker.backends.transformers import TransformersBackend

            backend: Backend = TransformersBackend(
                [name for name, kind in engine_models if kind == "chat"],
                embedding_models=[name for name, kind in engine_models if kind == "embedding"],
                device=self._options.device,
                max_batch_size=self._options.max_batch_size,
            )
            return backend
        from infermesh.worker.backends.openai_http import OpenAIBackend

        _, url, key_env = key
        api_key = None
        if key_env:
            api_key = self._options.secrets.get(key_env)
            if api_key is None:
                raise ConfigError(f"the environment variable {key_env} (upstream key) is not set")
        return OpenAIBackend(url, api_key=api_key)
