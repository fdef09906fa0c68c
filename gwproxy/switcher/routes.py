"""Routes: ``/api/models/*``, the model manager's API.

Any authenticated user may read (status, profiles, recommendations, the event stream); switching
and reloading profiles are for admins.

- ``GET  /api/models/status``                    state, current profile, job, GPUs, upstream health
- ``GET  /api/models/profiles``                  every profile with its fit verdict; load problems
- ``GET  /api/models/hardware-recommendations``  every profile ranked for this hardware
- ``POST /api/models/switch``                    ``{"profile_id", "dry_run"?, "force"?}`` → 202 + job
                                                 (200 for a dry run; 409 while another switch runs)
- ``POST /api/models/load``, ``/unload``         ``{"profile_id"}``: a model beside the switched one
                                                 (``switch.on_demand``; 202 while it loads)
- ``POST /api/models/reload``                    re-read the profile files
- ``GET  /api/models/events``                    Server-Sent Events: one ``status`` event, then a
                                                 ``job`` event per change (see ``events``)
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web
from aiohttp_sse import sse_response
from marshmallow import RAISE, Schema, fields, validate

from gwproxy.bodies import StrictBool, json, load
from gwproxy.errors import Conflict
from gwproxy.keys import SWITCHER
from gwproxy.operations import Access, operation
from gwproxy.switcher.fleet import Fleet


class SwitchBody(Schema):
    class Meta:
        unknown = RAISE

    profile_id = fields.String(required=True)
    dry_run = StrictBool(load_default=False)
    force = StrictBool(load_default=False)


class ModelsStatus(Schema):
    backend = fields.String(required=True, allow_none=True)
    state = fields.String(required=True)
    current_profile = fields.String(required=True, allow_none=True)
    instance = fields.Dict(required=True, allow_none=True)
    served_models = fields.List(fields.String(), required=True)
    upstream = fields.Dict(required=True)  # the primary: where managed models serve
    upstreams = fields.List(fields.Dict(), required=True)  # every upstream: status, models, load, health
    on_demand = fields.Boolean(required=True)  # switch.on_demand: models load when a request names them
    instances = fields.List(fields.Dict(), required=True)  # the models loaded on demand: state, GPUs, port
    interrupted = fields.List(fields.String(), required=True)  # on-demand models a gateway restart lost
    error = fields.String(required=True, allow_none=True)
    boot = fields.Dict(required=True, allow_none=True)  # default, started, reason: a default that did not fit
    gate = fields.Dict(required=True)
    job = fields.Dict(required=True, allow_none=True)
    log_tail = fields.List(fields.String(), required=True)  # the last lines the loading model printed
    hardware = fields.Dict(required=True)


class ProfileList(Schema):
    hardware = fields.String(required=True)
    current_profile = fields.String(required=True, allow_none=True)
    data = fields.List(fields.Dict(), required=True)
    problems = fields.List(fields.Dict(), required=True)


class Recommendations(Schema):
    hardware = fields.Dict(required=True)
    recommendations = fields.List(fields.Dict(), required=True)


class SwitchAnswer(Schema):
    job = fields.Dict(required=True)
    joined = fields.Boolean(required=True)


class ProfileBody(Schema):
    class Meta:
        unknown = RAISE

    profile_id = fields.String(required=True, validate=validate.Length(min=1, max=256))


class InstanceAnswer(Schema):
    instance = fields.Dict(required=True, allow_none=True)
    state = fields.String(required=True)


def _fleet(request: web.Request) -> Fleet:
    fleet = request.app[SWITCHER].fleet
    if fleet is None:
        raise Conflict(
            "Loading models on demand is off on this gateway: set switch.on_demand = true (process backend)",
            code="on_demand_disabled",
        )
    return fleet


@operation("Load a profile beside the served model (202; 200 when it is already loaded)", "models",
           body=ProfileBody, answer=InstanceAnswer, status=202, others={200: InstanceAnswer},
           access=Access.ADMIN, errors=(400, 404, 409))  # fmt: skip
async def load_model(request: web.Request) -> web.Response:
    body = await load(request, ProfileBody())
    fleet = _fleet(request)
    pid = body["profile_id"]
    if pid == request.app[SWITCHER].current:
        return json({"instance": None, "state": "ready"})  # it is the switched model
    resident = fleet.residents.get(pid)
    if resident is not None and resident.state == "ready":
        return json({"instance": resident.public(), "state": "ready"})
    task = fleet.load(pid)
    await asyncio.sleep(0)  # the load places the model (or refuses) before its first await
    if task.done() and not task.cancelled() and task.exception() is not None:
        raise Conflict(str(task.exception()), code="model_not_loaded")
    resident = fleet.residents.get(pid)
    return json({"instance": resident.public() if resident else None, "state": "loading"}, status=202)


@operation("Unload a profile loaded on demand", "models", body=ProfileBody, answer=InstanceAnswer,
           access=Access.ADMIN, errors=(400, 404, 409))  # fmt: skip
async def unload_model(request: web.Request) -> web.Response:
    body = await load(request, ProfileBody())
    fleet = _fleet(request)
    if body["profile_id"] == request.app[SWITCHER].current:
        raise Conflict("that is the switched model; switch to another profile instead", code="switched_model")
    await fleet.unload(body["profile_id"])
    return json({"instance": None, "state": "unloaded"})


class Reloaded(Schema):
    loaded = fields.List(fields.String(), required=True)
    problems = fields.List(fields.Dict(), required=True)


@operation("The running model, the switch job, the GPUs, the upstream", "models", answer=ModelsStatus)
async def status(request: web.Request) -> web.Response:
    return json(await request.app[SWITCHER].status())


@operation("Every model profile with its fit for this hardware", "models", answer=ProfileList)
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


@operation("Every profile ranked for this hardware", "models", answer=Recommendations)
async def recommendations(request: web.Request) -> web.Response:
    switcher = request.app[SWITCHER]
    hw = await switcher.hardware()
    names = {p.id: p.name for p in switcher.profiles.profiles.values()}
    ranked = [{"rank": i, "name": names[p.profile_id], **p.public()} for i, p in enumerate(switcher.plans(hw), 1)]
    return json({"hardware": hw.public(), "recommendations": ranked})


@operation("Switch the served model (202 + job; 200 for a dry run)", "models", body=SwitchBody,
           answer=SwitchAnswer, status=202, others={200: SwitchAnswer}, access=Access.ADMIN,
           errors=(400, 404, 409))  # fmt: skip
async def switch(request: web.Request) -> web.Response:
    body = await load(request, SwitchBody())
    job, joined = request.app[SWITCHER].switch(body["profile_id"], dry_run=body["dry_run"], force=body["force"])
    status = 200 if job.dry_run else 202
    return json({"job": job.public(), "joined": joined}, status=status)


@operation("Re-read the profile files", "models", answer=Reloaded, access=Access.ADMIN)
async def reload(request: web.Request) -> web.Response:
    loaded = request.app[SWITCHER].reload()
    return json(
        {
            "loaded": sorted(loaded.profiles),
            "problems": [{"file": x.file, "field": x.field, "reason": x.reason} for x in loaded.problems],
        }
    )


# Job fields every job event carries; the others only when they changed since the last event
# this stream sent for that job (``history``: only the entries added since).
JOB_ALWAYS = ("id", "profile_id", "dry_run", "state", "phase", "progress", "done", "outcome")


def job_delta(job: dict[str, Any], sent: dict[str, Any] | None) -> dict[str, Any]:
    """What a stream sends for ``job`` after having sent ``sent`` (the job as last sent, or None:
    everything)."""
    if sent is None:
        return job
    out = {k: job[k] for k in JOB_ALWAYS}
    for key, value in job.items():
        if key in JOB_ALWAYS or key == "history":
            continue
        if sent.get(key) != value:
            out[key] = value
    added = job["history"][len(sent.get("history", [])) :]
    if added:
        out["history"] = added
    return out


@operation("Switch progress as Server-Sent Events, ending with the job", "models", answer="events",
           query={"follow": "true: stay open across switches (default false)"})  # fmt: skip
async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: a ``status`` event (the whole status), then a ``job`` event for each
    change of a switch job: ``{"state", "current_profile", "job"}`` where ``job`` is whole the
    first time this stream sends that job, and afterwards ``JOB_ALWAYS`` plus what changed; and an
    ``instance`` event (``{"instance", "change"}``) for each change of a model loaded on demand. The
    stream ends after the final event of the switch it watches — the one running when it opened,
    else the next one started (dry runs are sent but not waited for); ``?follow=true`` keeps it
    open across switches."""
    switcher = request.app[SWITCHER]
    follow = request.query.get("follow", "false").lower() in ("1", "true", "yes")
    queue = switcher.subscribe()
    sent: dict[str, dict[str, Any]] = {}
    try:
        async with sse_response(request, ping_interval=15) as resp:
            status = await switcher.status()
            await resp.send(orjson.dumps(status).decode(), event="status")
            running = status["job"] if status["job"] and not status["job"]["done"] else None
            watched = running["id"] if running else None
            if running:
                sent[running["id"]] = running
            while resp.is_connected():
                try:
                    event = await asyncio.wait_for(queue.get(), 30)
                except TimeoutError:
                    continue
                if "instance" in event:  # a model loaded on demand changed: sent whole
                    await resp.send(orjson.dumps(event).decode(), event="instance")
                    continue
                job = event["job"]
                await resp.send(
                    orjson.dumps({**event, "job": job_delta(job, sent.get(job["id"]))}).decode(), event="job"
                )
                sent[job["id"]] = job
                if watched is None and not job["dry_run"]:
                    watched = job["id"]
                if not follow and job["id"] == watched and job["done"]:
                    break
        return resp
    finally:
        switcher.unsubscribe(queue)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/models/status", status)
    app.router.add_get("/api/models/profiles", profiles)
    app.router.add_get("/api/models/hardware-recommendations", recommendations)
    app.router.add_post("/api/models/switch", switch)
    app.router.add_post("/api/models/load", load_model)
    app.router.add_post("/api/models/unload", unload_model)
    app.router.add_post("/api/models/reload", reload)
    app.router.add_get("/api/models/events", events)
