"""The catalog a gateway serves from."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from infermesh.catalog.spec import ModelSpec
from infermesh.errors import ConfigError, ModelNotFound


class Catalog:
    """Models by id, in the order they were defined. An embedding model must say its
    ``dimensions``: the gateway checks every vector a worker sends against it."""

    def __init__(self, specs: Iterable[ModelSpec]) -> None:
        self._specs = {spec.id: spec for spec in specs}
        for spec in self._specs.values():
            if spec.kind == "embedding" and spec.dimensions is None:
                raise ConfigError(
                    f"the catalog's embedding model {spec.id!r} needs dimensions "
                    "(the length of its vectors)"
                )

    def get(self, model_id: str) -> ModelSpec:
        try:
            return self._specs[model_id]
        except KeyError:
            raise ModelNotFound(model_id) from None

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._specs

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs.values())

    def all(self) -> list[ModelSpec]:
        return list(self._specs.values())
