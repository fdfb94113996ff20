"""The catalog a gateway serves from."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from infermesh.catalog.spec import ModelSpec
from infermesh.errors import ModelNotFound


class Catalog:
    """Models by id, in the order they were defined."""

    def __init__(self, specs: Iterable[ModelSpec]) -> None:
        self._specs = {spec.id: spec for spec in specs}

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
