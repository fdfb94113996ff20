"""The catalog TOML file: read, write, add and remove models."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from infermesh.billing.pricing import Pricing
from infermesh.catalog.spec import TINY_MODEL_ID, ModelSpec, ServeSpec
from infermesh.errors import ConfigError
from infermesh.protocol.models import Capabilities

BUILTIN_TINY = f"builtin:{TINY_MODEL_ID}"
TINY_EMBED_MODEL_ID = "infermesh-tiny-embed"
BUILTIN_TINY_EMBED = f"builtin:{TINY_EMBED_MODEL_ID}"
TINY_EMBED_DIMENSIONS = 64
TINY_EMBED_CONTEXT_LENGTH = 512


def default_models() -> list[ModelSpec]:
    """The embedded default: the tiny local chat model and the tiny embedding model, on
    the in-process transformers engine."""
    return [
        ModelSpec(
            id=TINY_MODEL_ID,
            tier="fast",
            params="tiny",
            description="Tiny local model with random weights, built on first run. "
            "Its text is meaningless; every layer is real.",
            context_length=2048,
            capabilities=Capabilities(tools=True, vision=False),
            pricing=Pricing.model_validate(
                {"input_per_million": "0.50", "output_per_million": "1.50"}
            ),
            serve=ServeSpec(backend="transformers", engine_model=BUILTIN_TINY),
        ),
        ModelSpec(
            id=TINY_EMBED_MODEL_ID,
            tier="fast",
            params="tiny",
            description="Tiny local embedding model with random weights, built on first run. "
            "Its vectors are meaningless; every layer is real.",
            context_length=TINY_EMBED_CONTEXT_LENGTH,
            kind="embedding",
            dimensions=TINY_EMBED_DIMENSIONS,
            pricing=Pricing.model_validate({"input_per_million": "0.02"}),
            serve=ServeSpec(backend="transformers", engine_model=BUILTIN_TINY_EMBED),
        ),
    ]


class CatalogFile:
    """A TOML file holding ``[[models]]`` tables (see README for the format)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> list[ModelSpec]:
        try:
            data = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read the model catalog {self.path}: {exc}") from exc
        models = data.get("models", [])
        if not isinstance(models, list):
            raise ConfigError(f"{self.path}: 'models' must be an array of tables")
        specs = [self._parse(entry, index) for index, entry in enumerate(models)]
        seen: set[str] = set()
        for spec in specs:
            if spec.id in seen:
                raise ConfigError(f"{self.path}: model '{spec.id}' is defined twice")
            seen.add(spec.id)
        return specs

    def load_or_default(self) -> list[ModelSpec]:
        return self.load() if self.exists() else default_models()

    def save(self, specs: list[ModelSpec]) -> None:
        document: dict[str, Any] = {
            "models": [spec.model_dump(exclude_none=True) for spec in specs]
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(self.path.suffix + ".tmp")
        temporary.write_text(tomli_w.dumps(document), encoding="utf-8")
        os.replace(temporary, self.path)

    def add(self, spec: ModelSpec, *, replace: bool = False) -> None:
        specs = self.load_or_default()
        if any(existing.id == spec.id for existing in specs) and not replace:
            raise ConfigError(f"model '{spec.id}' is already in the catalog (use --replace)")
        self.save([existing for existing in specs if existing.id != spec.id] + [spec])

    def remove(self, model_id: str) -> None:
        specs = self.load_or_default()
        remaining = [spec for spec in specs if spec.id != model_id]
        if len(remaining) == len(specs):
            raise ConfigError(f"model '{model_id}' is not in the catalog")
        self.save(remaining)

    def _parse(self, entry: object, index: int) -> ModelSpec:
        try:
            return ModelSpec.model_validate(entry)
        except ValidationError as exc:
            raise ConfigError(f"{self.path}: models[{index}] is invalid: {exc}") from exc
