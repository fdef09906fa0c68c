"""The request id the gateway sent upstream, read back from an answer.

The gateway sends vLLM an id of its own for every request (128 random bits; the client's
``X-Request-ID`` stays the client's), and vLLM makes it the response's ``id`` (``chatcmpl-…``,
``cmpl-…``, ``embd-…``, ``resp_…``). A test comparing bytes with a direct request sends that
request with the same id."""

from __future__ import annotations

import re

_ID = re.compile(rb'"id":\s?"(?:chatcmpl-|cmpl-|embd-|resp_)([0-9a-f]{32})"')


def upstream_id(answer: bytes) -> str | None:
    """The id, or None for an answer that carries none (``/tokenize``, an error)."""
    found = _ID.search(answer)
    return None if found is None else found.group(1).decode()
