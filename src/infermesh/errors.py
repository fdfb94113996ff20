"""The one error tree of infermesh.

Services raise these; the gateway renders every one of them as OpenAI's error
envelope ``{"error": {"message", "type", "param", "code"}}`` with its status.
"""

from __future__ import annotations

from typing import Any


class InfermeshError(Exception):
    """Base of every error that reaches an API client."""

    status_code: int = 500
    error_type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after


class InvalidRequest(InfermeshError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class Unauthorized(InfermeshError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PaymentRequired(InfermeshError):
    """The account cannot pay for the request (balance or tier): nothing was dispatched."""

    status_code = 402
    error_type = "insufficient_quota"
    code = "payment_required"


class Forbidden(InfermeshError):
    status_code = 403
    error_type = "permission_error"
    code = "forbidden"


class NotFound(InfermeshError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist.", param="model")


class Conflict(InfermeshError):
    """The request conflicts with what another account already did (e.g. claimed it)."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(InfermeshError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class ServiceUnavailable(InfermeshError):
    """A part the request needs is switched off or out of reach; try again later."""

    status_code = 503
    error_type = "service_unavailable"
    code = "service_unavailable"


class NoWorkerAvailable(ServiceUnavailable):
    code = "no_worker_available"


class BackendError(InfermeshError):
    """The engine behind a worker failed while serving a request."""

    status_code = 502
    error_type = "server_error"
    code = "backend_error"


class WorkerLost(BackendError):
    """The worker running a job disconnected, timed out or broke the protocol.

    The job may be retried on another worker as long as nothing reached the client.
    """

    code = "worker_lost"


class WorkerFailed(BackendError):
    """The worker reported that it could not run the job (an ``error`` frame). The
    request may be retried elsewhere; what the worker said goes no further."""

    code = "worker_error"


class WorkerTimeout(WorkerLost):
    """The worker missed a deadline: no first token, a silence mid-job, or a job that
    ran past the whole request's time."""

    code = "worker_timeout"


class WorkerMisbehaved(WorkerLost):
    """The worker broke the protocol on this job (e.g. sent more than it may)."""

    code = "worker_misbehaved"


class ClientDisconnected(InfermeshError):
    """The client went away before its (non-streamed) answer was ready; the work was
    stopped. Nobody reads this answer; the status is for the access log."""

    status_code = 499
    error_type = "invalid_request_error"
    code = "client_closed_request"


class UpstreamRejected(InfermeshError):
    """An upstream OpenAI-compatible engine refused the request as invalid (its 4xx)."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "upstream_rejected"


class ConfigError(Exception):
    """Bad configuration found at start-up or by a CLI command (not an API error)."""


class RateLimited(InfermeshError):
    """A rate limit refused the request: nothing was run or charged. ``headers`` are the
    ``x-ratelimit-*`` headers of the answer."""

    status_code = 429
    error_type = "requests"
    code = "rate_limit_exceeded"
    headers: dict[str, str]

    def __init__(self, message: str, **options: Any) -> None:
        super().__init__(message, **options)
        self.headers = {}
