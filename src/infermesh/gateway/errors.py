"""Every error as OpenAI's envelope, with the right status."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import TypeAdapter, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from infermesh.errors import InfermeshError, InvalidRequest
from infermesh.protocol.errors import ErrorBody, ErrorEnvelope

_STATUS_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
_ENVELOPE_JSON = TypeAdapter(ErrorEnvelope)


def error_response(
    status: int,
    message: str,
    *,
    error_type: str,
    code: str | None = None,
    param: str | None = None,
    retry_after: float | None = None,
) -> Response:
    """OpenAI's error envelope as a JSON response (serialized once, by pydantic-core)."""
    body = ErrorEnvelope(error=ErrorBody(message=message, type=error_type, param=param, code=code))
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after else None
    content = _ENVELOPE_JSON.dump_json(body)
    return Response(content, status_code=status, headers=headers, media_type="application/json")


def render(exc: InfermeshError) -> Response:
    return error_response(
        exc.status_code,
        exc.message,
        error_type=exc.error_type,
        code=exc.code,
        param=exc.param,
        retry_after=exc.retry_after,
    )


def invalid_request_from(errors: list[Any]) -> InvalidRequest:
    """A readable 400 from pydantic's errors (the first one names the parameter)."""
    if not errors:
        return InvalidRequest("The request body is invalid.")
    first = errors[0]
    location = [part for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return InvalidRequest(
            "We could not parse the JSON body of your request. It must be valid JSON.",
            code="invalid_json",
        )
    param = _param_name(location)
    where = f"'{param}': " if param else ""
    return InvalidRequest(f"Invalid value for {where}{first.get('msg', 'invalid')}.", param=param)


def _param_name(location: list[Any]) -> str | None:
    name = ""
    for part in location:
        if isinstance(part, int):
            name += f"[{part}]"
        elif not name:
            name = str(part)
        elif not str(part)[0].isupper():  # skip pydantic's union member names (TextPart, …)
            name += f".{part}"
    return name or None


def install_error_handlers(app: FastAPI) -> None:
    async def on_infermesh_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, InfermeshError)
        record = getattr(request.state, "record", None)
        if record is not None:  # for the access log line
            record.error_code = exc.code
        return render(exc)

    async def on_validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError | ValidationError)
        return render(invalid_request_from(list(exc.errors())))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}."
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
        else:
            message = str(exc.detail)
        error_type = _STATUS_TYPES.get(exc.status_code, "invalid_request_error")
        code = "unknown_url" if exc.status_code == 404 else None
        return error_response(exc.status_code, message, error_type=error_type, code=code)

    app.add_exception_handler(InfermeshError, on_infermesh_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(ValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
