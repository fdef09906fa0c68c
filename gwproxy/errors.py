"""The gateway's one exception tree and its rendering as an OpenAI error envelope.

::

    GatewayError                      500 internal_error
    ├── InvalidRequest                400 invalid_request_error  (param names the field)
    │   └── InvalidJSON               400 invalid_request_error  code "invalid_json"
    ├── Unauthorized                  401 authentication_error   code "invalid_api_key"
    │   └── RefreshReused             401 authentication_error   (names the revoked session)
    ├── Forbidden                     403 permission_error       code "insufficient_role"
    ├── NotFound                      404 not_found_error
    │   └── ResponseNotFound          404 NotFoundError          code 404 (vLLM's, param "response_id")
    ├── Conflict                      409 conflict_error
    ├── PayloadTooLarge               413 invalid_request_error  code "payload_too_large"
    ├── UnsupportedEncoding           415 invalid_request_error  code "unsupported_content_encoding"
    ├── TooManyRequests               429 rate_limit_error       code "rate_limit_exceeded"
    │                                                            (+ Retry-After)
    ├── UpstreamError                 502 upstream_error
    │   ├── UpstreamUnavailable       502 upstream_error         code "upstream_unavailable"
    │   └── UpstreamTimeout           504 upstream_error         code "upstream_timeout"
    └── ServiceUnavailable            503 service_unavailable    (+ Retry-After)
        └── ModelNotReady             503 service_unavailable    code "model_not_ready"

Every error that leaves the gateway, raised or an aiohttp ``HTTPException``, is rendered by
``render`` (used by the errors middleware) as
``{"error":{"message":…,"type":…,"param":…,"code":…}}`` so OpenAI SDKs raise the matching class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import orjson
from aiohttp import web


class GatewayError(Exception):
    status = 500
    type = "internal_error"
    code: str | int | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})


CLIENT_CLOSED = 499  # nginx's status for a client that went away before the response ended


def status_of(exc: Exception) -> int:
    """The status an exception leaving a handler is answered with: ours, aiohttp's, else 500."""
    return exc.status if isinstance(exc, GatewayError | web.HTTPException) else 500


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class InvalidJSON(InvalidRequest):
    code = "invalid_json"


class Unauthorized(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class RefreshReused(Unauthorized):
    """A refresh token presented a second time: its whole session was revoked. ``session`` names
    it, so the route can refuse the session's access tokens at once, as a logout does."""

    def __init__(self, session: str) -> None:
        super().__init__("refresh token already used: all sessions from it are revoked")
        self.session = session


class Forbidden(GatewayError):
    status = 403
    type = "permission_error"
    code = "insufficient_role"


class NotFound(GatewayError):
    status = 404
    type = "not_found_error"


class ResponseNotFound(NotFound):
    """A stored response the caller may not name (another user's, or one the gateway never saw):
    vLLM's own 404 for a missing one, word for word, so it says nothing about whether it exists."""

    type = "NotFoundError"
    code = 404

    def __init__(self, response_id: str) -> None:
        super().__init__(f"Response with id '{response_id}' not found.", param="response_id")


class ModelNotFound(GatewayError):
    """A model no upstream serves: vLLM's 404, word for word (0.32: its type, code, ``param`` and
    message), naming the models the caller may use."""

    status = 404
    type = "NotFoundError"
    code = 404

    def __init__(self, model: str, available: list[str]) -> None:
        names = ", ".join(available) if available else "none"
        super().__init__(f"The model `{model}` does not exist. Valid aliases: {names}.", param="model")


class ModelNotAllowed(Forbidden):
    code = "model_not_allowed"


class Conflict(GatewayError):
    status = 409
    type = "conflict_error"


class TooManyRequests(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message, headers={**(headers or {}), "Retry-After": str(max(1, math.ceil(retry_after)))})


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class UnsupportedEncoding(GatewayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_content_encoding"


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "service_unavailable"

    def __init__(self, message: str, *, retry_after: int = 5, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after)})


class ModelNotReady(ServiceUnavailable):
    code = "model_not_ready"


# aiohttp's own HTTP exceptions → (OpenAI type, code).
_HTTP_TYPES: Mapping[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("not_found_error", None),
    405: ("invalid_request_error", "method_not_allowed"),
    409: ("conflict_error", None),
    413: ("invalid_request_error", "payload_too_large"),
    422: ("invalid_request_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def envelope(message: str, type_: str, param: str | None, code: str | int | None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def error_response(
    status: int,
    message: str,
    type_: str,
    *,
    param: str | None = None,
    code: str | int | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        body=envelope(message, type_, param, code),
        content_type="application/json",
        headers=headers,
    )


def render(exc: GatewayError) -> web.Response:
    return error_response(exc.status, exc.message, exc.type, param=exc.param, code=exc.code, headers=exc.headers)


def render_http(exc: web.HTTPException) -> web.Response:
    """An aiohttp HTTPException (404 route, 405, 413 body...) as an envelope, headers kept."""
    type_, code = _HTTP_TYPES.get(exc.status, ("server_error" if exc.status >= 500 else "invalid_request_error", None))
    message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
    if exc.status == 413:
        message = "Request body too large: " + (exc.text or exc.reason)
    headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
    return error_response(exc.status, message, type_, code=code, headers=headers)
