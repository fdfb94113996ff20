"""The Anthropic error type of each infermesh error."""

from __future__ import annotations

from infermesh.errors import InfermeshError
from infermesh.protocol.anthropic import ErrorObject, ErrorType
from infermesh.protocol.errors import ErrorBody

_BY_STATUS: dict[int, ErrorType] = {
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}
_BY_OPENAI_TYPE: dict[str, ErrorType] = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "insufficient_quota": "billing_error",
    "permission_error": "permission_error",
    "requests": "rate_limit_error",
    "service_unavailable": "overloaded_error",
}
_BY_CODE: dict[str, ErrorType] = {"worker_timeout": "timeout_error"}


def error_type(error: InfermeshError) -> ErrorType:
    """The type of an error answered with its status (before any answer was sent)."""
    if error.code in _BY_CODE:
        return _BY_CODE[error.code]
    default: ErrorType = "api_error" if error.status_code >= 500 else "invalid_request_error"
    return _BY_STATUS.get(error.status_code, default)


def error_object(body: ErrorBody) -> ErrorObject:
    """The error that ends a stream midway (the chat service says it in OpenAI's terms)."""
    kind = _BY_CODE.get(body.code or "") or _BY_OPENAI_TYPE.get(body.type, "api_error")
    return ErrorObject(type=kind, message=body.message)
