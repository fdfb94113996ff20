"""The catalog endpoints, /health and /metrics."""

from __future__ import annotations

from tests.support.gateway import RunningGateway


def test_list_models_has_openai_shape_and_our_fields(engine_gateway: RunningGateway) -> None:
    client = engine_gateway.client()
    models = {model.id: model for model in client.models.list()}
    assert set(models) == {
        "scripted",
        "scripted-plain",
        "scripted-broken",
        "scripted-rejects",
        "orphan",
    }
    scripted = models["scripted"]
    assert scripted.object == "model"
    assert scripted.owned_by == "infermesh"
    assert isinstance(scripted.created, int)
    extra = scripted.model_extra or {}
    assert extra["tier"] == "frontier"
    assert extra["params"] == "7B"
    assert extra["context_length"] == 8192
    assert extra["capabilities"] == {"tools": True, "vision": True}
    assert extra["available"] is True
    assert extra["description"] == "scripted on the scripted engine"
    assert (models["orphan"].model_extra or {})["available"] is False


def test_retrieve_model(engine_gateway: RunningGateway) -> None:
    model = engine_gateway.client().models.retrieve("scripted-plain")
    assert model.id == "scripted-plain"
    assert (model.model_extra or {})["capabilities"] == {"tools": False, "vision": False}


def test_health_needs_no_key_and_reports_availability(engine_gateway: RunningGateway) -> None:
    with engine_gateway.http() as http:
        response = http.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["version"]
    availability = {model["id"]: model["available"] for model in body["models"]}
    assert availability["scripted"] is True
    assert availability["orphan"] is False
    [worker] = body["workers"]
    assert worker["node_id"] == "local"
    assert worker["in_flight"] == 0
    assert {"jobs", "failures", "error_rate", "tokens_per_second"} <= set(worker)
    scripted = next(model for model in body["models"] if model["id"] == "scripted")
    assert scripted["workers"] == 1
    assert scripted["waiting"] == 0


def test_metrics_count_requests_latency_and_tokens(engine_gateway: RunningGateway) -> None:
    client = engine_gateway.client()
    client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "a b"}])
    with engine_gateway.http() as http:
        response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert (
        'infermesh_requests_total{model="scripted",route="/v1/chat/completions",status="200"}'
        in text
    )
    assert 'infermesh_request_latency_seconds_bucket{le="0.005",model="scripted"' in text
    assert 'infermesh_time_to_first_token_seconds_count{model="scripted"}' in text
    assert 'infermesh_tokens_total{direction="completion",model="scripted"}' in text
