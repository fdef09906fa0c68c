"""Routes: ``/api/models/*``, the model manager's API.

Any authenticated user may read (status, profiles, recommendations, the event stream); switching
and reloading profiles are for admins.

- ``GET  /api/models/status``                    state, current profile, job, GPUs, upstream health
- ``GET  /api/models/profiles``                  every profile with its fit verdict; load problems
- ``GET  /api/models/hardware-recommendations``  every profile ranked for this hardware
- ``POST /api/models/switch``                    ``{"profile_id", "dry_run"?, "force"?}`` → 202 + job
                                                 (200 for a dry run; 409 while another switch runs)
- ``POST /api/models/reload``                    re-read the profile files
- ``GET  /api/models/events``                    Server-Sent Events: one ``status`` event, then a
                                                 ``job`` event per change
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web
from aiohttp_sse import sse_response
from marshmallow import RAISE, Schema, fields

from gwproxy.auth.routes import require_admin
from gwproxy.bodies import StrictBool, json, load
from gwproxy.keys import SWITCHER


class SwitchBody(Schema):
    class Meta:
        unknown = RAISE

    profile_id = fields.String(required=True)
    dry_run = StrictBool(load_default=False)
    force = StrictBool(load_default=False)


async def status(request: web.Request) -> web.Response:
    return json(await request.app[SWITCHER].status())


async def profiles(request: web.Request) -> web.Response:
    switcher = request.app[SWITCHER]
    hw = await switcher.hardware()
    plans = {p.profile_id: p for p in switcher.plans(hw)}
    return json(
        {
            "hardware": hw.describe(),
            "current_profile": switcher.current,
            "data": [
                {**p.public(), "current": p.id == switcher.current, "fit": plans[p.id].public()}
                for p in switcher.profiles.profiles.values()
            ],
            "problems": [{"file": x.file, "field": x.field, "reason": x.reason} for x in switcher.profiles.problems],
        }
    )


async def recommendations(request: web.Request) -> web.Response:
    switcher = request.app[SWITCHER]
    hw = await switcher.hardware()
    names = {p.id: p.name for p in switcher.profiles.profiles.values()}
    ranked = [{"rank": i, "name": names[p.profile_id], **p.public()} for i, p in enumerate(switcher.plans(hw), 1)]
    return json({"hardware": hw.public(), "recommendations": ranked})


async def switch(request: web.Request) -> web.Response:
    require_admin(request)
    body = await load(request, SwitchBody())
    job, joined = request.app[SWITCHER].switch(body["profile_id"], dry_run=body["dry_run"], force=body["force"])
    status = 200 if job.dry_run else 202
    return json({"job": job.public(), "joined": joined}, status=status)


async def reload(request: web.Request) -> web.Response:
    require_admin(request)
    loaded = request.app[SWITCHER].reload()
    return json(
        {
            "loaded": sorted(loaded.profiles),
            "problems": [{"file": x.file, "field": x.field, "reason": x.reason} for x in loaded.problems],
        }
    )


async def events(request: web.Request) -> web.StreamResponse:
    switcher = request.app[SWITCHER]
    queue = switcher.subscribe()
    try:
        async with sse_response(request, ping_interval=15) as resp:
            await resp.send(orjson.dumps(await switcher.status()).decode(), event="status")
            while resp.is_connected():
                try:
                    event = await asyncio.wait_for(queue.get(), 30)
                except TimeoutError:
                    continue
                await resp.send(event.decode(), event="job")
        return resp
    finally:
        switcher.unsubscribe(queue)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/models/status", status)
    app.router.add_get("/api/models/profiles", profiles)
    app.router.add_get("/api/models/hardware-recommendations", recommendations)
    app.router.add_post("/api/models/switch", switch)
    app.router.add_post("/api/models/reload", reload)
    app.router.add_get("/api/models/events", events)
