"""shape: refuses a request whose target or body the gateway will not handle, before anything
reads it — so an unauthenticated client cannot make the gateway buffer a large body, and no route
sees a path that means something else upstream.

- **Path**: a target with ``.`` or ``..`` segments (also percent-encoded) is refused with 400:
  routing and the upstream would read it differently. Absolute-form targets
  (``GET http://host/v1/models``) are fine: handlers use the parsed path, never the raw target.
- **Body size**, from ``Content-Length`` before reading, and as a cap on what ``read`` accepts
  for chunked bodies, by the endpoint's ``body_limit``: ``AUTH_MAX_BODY_BYTES`` for login, refresh
  and logout (open to anyone), ``server.api_max_body_bytes`` for the rest of ``/api`` and the
  gateway's own pages, ``proxy.max_body_bytes`` for what is forwarded upstream (``/v1``, vLLM's
  extras, ``/api/chat``).
- **NUL characters** in the path, or in a query parameter of the gateway's own API, are refused
  with 400 naming the parameter (PostgreSQL cannot compare or store them; nothing legitimate
  carries one).
- **Content-Encoding** of a request body: aiohttp decodes gzip and deflate (brotli and zstd when
  their libraries are installed), and the decoded body is what goes upstream, without the header;
  any other encoding is refused with 415.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.compression_utils import HAS_BROTLI, HAS_ZSTD
from aiohttp.typedefs import Handler, Middleware

from gwproxy.config import Config
from gwproxy.errors import InvalidRequest, PayloadTooLarge, UnsupportedEncoding
from gwproxy.keys import EXCHANGE
from gwproxy.proxy.endpoints import BodyLimit, Endpoint

AUTH_MAX_BODY_BYTES = 16 * 1024
DECODED = frozenset(
    {"", "identity", "gzip", "x-gzip", "deflate", *(("br",) if HAS_BROTLI else ()), *(("zstd",) if HAS_ZSTD else ())}
)


def body_limit(endpoint: Endpoint, cfg: Config) -> int:
    """The largest body ``endpoint`` reads, in bytes (its ``body_limit`` kind, configured)."""
    if endpoint.body_limit is BodyLimit.PROXY:
        return cfg.proxy.max_body_bytes
    if endpoint.body_limit is BodyLimit.AUTH:
        return AUTH_MAX_BODY_BYTES
    return cfg.server.api_max_body_bytes


def has_dot_segment(path: str) -> bool:
    return any(segment in (".", "..") for segment in path.split("/"))


def shape_middleware(cfg: Config) -> Middleware:
    @web.middleware
    async def shape(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path  # percent-decoded: %2e%2e is ".." here
        if "/." in path and has_dot_segment(path):
            raise InvalidRequest(f"The request path {path!r} has '.' or '..' segments: send it normalised")
        if "\x00" in path:
            raise InvalidRequest("The request path contains a NUL character")
        if request.query_string and path.startswith("/api/"):
            for name, value in request.query.items():
                if "\x00" in value or "\x00" in name:
                    raise InvalidRequest(f"Query parameter '{name}' contains a NUL character", param=name)
        if request.body_exists:
            limit = body_limit(request[EXCHANGE].endpoint, cfg)
            length = request.content_length
            if length is not None and length > limit:
                raise PayloadTooLarge(f"Request body too large: {length} bytes, at most {limit} accepted here")
            # aiohttp's per-request cap on read(): for chunked bodies, which carry no length.
            request._client_max_size = limit  # no public setter; clone() would copy the request
            encoding = request.headers.get("Content-Encoding", "").strip().lower()
            if encoding not in DECODED:
                raise UnsupportedEncoding(
                    f"Content-Encoding {encoding!r} is not supported: send the body plain, gzip or deflate"
                )
        return await handler(request)

    return shape
