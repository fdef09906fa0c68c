"""The reference: a bare aiohttp pass-through (one shared ClientSession, uvloop), no features.

Usage: python bench/bare_proxy.py PORT UPSTREAM_ORIGIN
"""

import sys

import aiohttp
import uvloop
from aiohttp import web

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "date", "server"}


async def session_ctx(app: web.Application):
    app["session"] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None)
    )
    yield
    await app["session"].close()


async def proxy(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    async with request.app["session"].request(
        request.method, request.app["origin"] + request.raw_path, data=body or None, headers=headers
    ) as up:
        out = {k: v for k, v in up.headers.items() if k.lower() not in HOP}
        resp = web.StreamResponse(status=up.status, headers=out)
        await resp.prepare(request)
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp


def main() -> None:
    app = web.Application()
    app["origin"] = sys.argv[2]
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", proxy)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
