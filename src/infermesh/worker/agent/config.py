"""What a worker agent is told: the gateways to dial, its token, the models it serves."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError

from infermesh.catalog.spec import TINY_MODEL_ID, BackendKind, ModelKind, ModelSpec, ServeSpec
from infermesh.catalog.store import BUILTIN_TINY, BUILTIN_TINY_EMBED, TINY_EMBED_MODEL_ID
from infermesh.errors import ConfigError

CONNECT_PATH = "/v1/workers/connect"
UPSTREAM_KEY_ENV = "INFERMESH_UPSTREAM_KEY"
_WEBSOCKET_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}


@dataclass(frozen=True)
class AgentConfig:
    """How an agent connects and what it announces.

    ``url`` is the gateway dialed first and ``other_urls`` the other gateways of the same
    network, dialed in turn when one is lost or fails (see :attr:`urls`). ``models`` maps
    each served model to the jobs it runs at once, ``kinds`` each embedding model to
    ``"embedding"`` (a model it leaves out is a chat model). When every gateway has failed, a
    reconnect waits ``backoff_initial`` seconds, doubling up to ``backoff_max``, with
    jitter; a gateway silent for ``heartbeat_misses`` heartbeat intervals is taken for dead.
    """

    url: str
    token: str
    models: dict[str, int]
    name: str | None = None
    kinds: dict[str, ModelKind] = field(default_factory=dict)
    other_urls: tuple[str, ...] = ()
    heartbeat_misses: int = 3
    connect_timeout: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0

    @property
    def urls(self) -> list[str]:
        """Every gateway's WebSocket URL, in the order they are dialed, once each."""
        return list(dict.fromkeys((self.url, *self.other_urls)))

    def kind(self, model: str) -> ModelKind:
        """What ``model`` is served for."""
        return self.kinds.get(model, "chat")


def connect_url(gateway: str) -> str:
    """The WebSocket URL of a gateway given as ``http(s)://host:port`` (or its ``/v1``)."""
    parts = urlsplit(gateway.strip())
    scheme = _WEBSOCKET_SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ConfigError(f"the gateway must be an http(s):// URL, not {gateway!r}")
    path = parts.path.rstrip("/")
    if not path.endswith(CONNECT_PATH):
        path = path.removesuffix("/v1") + CONNECT_PATH
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


_BUILTINS = {
    ("chat", TINY_MODEL_ID): BUILTIN_TINY,
    ("embedding", TINY_EMBED_MODEL_ID): BUILTIN_TINY_EMBED,
}


def serve_spec(
    value: str,
    *,
    backend: BackendKind,
    upstream_url: str | None = None,
    upstream_key_env: str | None = None,
    kind: ModelKind = "chat",
) -> ModelSpec:
    """The model of one ``--serve MODEL_ID[=ENGINE_MODEL]`` option (``--embed`` for an
    embedding model: ``kind="embedding"``).

    Without ``=``, the engine model is the model id, except that ``infermesh-tiny`` (and
    ``infermesh-tiny-embed`` for embeddings) on the transformers backend is the built-in
    tiny model.
    """
    model_id, has_engine_model, engine_model = value.partition("=")
    if not has_engine_model:
        builtin = _BUILTINS.get((kind, model_id)) if backend == "transformers" else None
        engine_model = builtin or model_id
    try:
        serve = ServeSpec(
            backend=backend,
            engine_model=engine_model,
            upstream_url=upstream_url,
            upstream_key_env=upstream_key_env,
        )
        return ModelSpec(id=model_id, serve=serve, kind=kind)
    except ValidationError as exc:
        problems = "; ".join(error["msg"] for error in exc.errors(include_url=False))
        option = "--embed" if kind == "embedding" else "--serve"
        raise ConfigError(f"{option} {value!r}: {problems}") from None
