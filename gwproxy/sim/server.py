"""Server: the simulator's HTTP face — vLLM's routes, timing, errors and Prometheus metrics.

Timing: stream headers go out at once, the first decode step after ``ttft_ms``, each further
step ``itl_ms`` later; a non-streaming answer arrives after the whole generation time. A client
that goes away mid-generation is counted as ``finished_reason="abort"`` in
``vllm:request_success_total`` (what tests use to see that the gateway aborted the upstream).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import os
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gwproxy.sim import engine, responses, wire
from gwproxy.sim.engine import RequestError

VLLM_VERSION = wire.VLLM_VERSION


@dataclass(frozen=True, slots=True)
class SimConfig:
    models: tuple[str, ...] = ("sim-model",)
    max_model_len: int = 4096
    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    seed: int | None = None
    embedding_dim: int = 64
    capacity: int = 256  # requests that fit the simulated KV cache at once
    reasoning: bool = False  # a reasoning model: reasoning_content before the answer
    split_writes: bool = False  # each event in several writes, UTF-8 characters cut in two
    prefill_ms_per_token: float = 0.0  # prefill time per prompt token not found in the prefix cache
    prefix_cache_tokens: int = 0  # the prefix cache's size in tokens (0: none; every token is prefilled)
    sleep_mode: bool = False  # --enable-sleep-mode: /sleep, /wake_up, /is_sleeping (vLLM's dev mode)
    sleep_ms: float = 500.0  # how long falling asleep takes (level 1 offloads the weights to host RAM)
    wake_ms: float = 1000.0  # how long waking from level 1 takes (level 2 reloads weights: three times)
    responses_store: bool = False  # VLLM_ENABLE_RESPONSES_API_STORE=1: /v1/responses kept, retrievable

    @property
    def root(self) -> str:
        return f"gwproxy-sim/{self.models[0]}"

    @property
    def fingerprint(self) -> str:
        return wire.fingerprint(self.root, self.max_model_len)


class SimMetrics:
    """vLLM's metric names, labelled ``{engine="0",model_name=…}`` as vLLM 0.32 does."""

    def __init__(self, model: str) -> None:
        r = self.registry = CollectorRegistry()
        lbl = ["engine", "model_name"]
        who = ("0", model)
        self.running = Gauge("vllm:num_requests_running", "Requests running", lbl, registry=r).labels(*who)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting", lbl, registry=r).labels(*who)
        self.kv = Gauge("vllm:kv_cache_usage_perc", "KV cache usage", lbl, registry=r).labels(*who)
        self.prompt = Counter("vllm:prompt_tokens", "Prefill tokens", lbl, registry=r).labels(*who)
        self.generation = Counter("vllm:generation_tokens", "Generated tokens", lbl, registry=r).labels(*who)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "TTFT", lbl, registry=r).labels(*who)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "ITL", lbl, registry=r).labels(*who)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "E2E latency", lbl, registry=r).labels(*who)
        self.success = Counter(
            "vllm:request_success", "Finished requests", ["engine", "finished_reason", "model_name"], registry=r
        )
        self.model = model
        self.active = 0


BLOCK_TOKENS = 16  # vLLM's KV block size: the prefix cache holds whole blocks


class PrefixCache:
    """vLLM's automatic prefix caching, as far as timing goes: the prompt is cut in blocks of
    ``BLOCK_TOKENS``, each named by the hash of everything up to its end; a request's prefill
    skips the blocks found from its start; every block is then cached, least recently used
    dropped past ``capacity`` tokens."""

    def __init__(self, capacity_tokens: int) -> None:
        self.blocks = capacity_tokens // BLOCK_TOKENS
        self._lru: collections.OrderedDict[int, None] = collections.OrderedDict()

    def uncached(self, tokens: list[int]) -> int:
        """Tokens of ``tokens`` to prefill (those after its longest cached prefix); caches it."""
        if not self.blocks:
            return len(tokens)
        hashes, running = [], 0
        for end in range(BLOCK_TOKENS, len(tokens) + 1, BLOCK_TOKENS):
            running = hash((running, tuple(tokens[end - BLOCK_TOKENS : end])))
            hashes.append(running)
        hit = 0
        for h in hashes:
            if h not in self._lru:
                break
            hit += 1
        for h in hashes:
            self._lru[h] = None
            self._lru.move_to_end(h)
        while len(self._lru) > self.blocks:
            self._lru.popitem(last=False)
        return len(tokens) - hit * BLOCK_TOKENS


SIM_PREFIX = web.AppKey("sim_prefix", PrefixCache)
SIM_RESPONSES = web.AppKey("sim_responses", responses.Store)


class SleepState:
    """vLLM's sleep mode: 0 awake, 1 weights offloaded to host RAM, 2 weights discarded."""

    def __init__(self) -> None:
        self.level = 0
        self.lock = asyncio.Lock()


SIM_SLEEP = web.AppKey("sim_sleep", SleepState)
SIM_CONFIG = web.AppKey("sim_config", SimConfig)
SIM_METRICS = web.AppKey("sim_metrics", SimMetrics)


def _error(message: str, status: int, param: str | None = None) -> web.Response:
    return web.Response(status=status, body=wire.error(message, status, param), content_type="application/json")


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"Invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object")
    return body


def _model(cfg: SimConfig, body: dict[str, Any]) -> str:
    model = body.get("model") or cfg.models[0]
    if model not in cfg.models:
        raise RequestError(not_found(cfg, str(model)), status=404, param="model")
    return str(model)


def not_found(cfg: SimConfig, model: str) -> str:
    """vLLM 0.32's message for a model it does not serve."""
    return f"The model `{model}` does not exist. Valid aliases: {', '.join(cfg.models)}."


def stream_usage(body: dict[str, Any]) -> tuple[bool, bool]:
    """(include_usage, continuous_usage_stats) as vLLM 0.32 reads ``stream_options``: the final
    usage event only when ``include_usage`` is true (it defaults to false: ``{}`` does not ask;
    vLLM 0.11 defaulted it to true), and per-chunk usage needs both. A non-empty
    ``stream_options`` without ``stream: true`` is refused, with vLLM's message."""
    options = body.get("stream_options")
    stream = body.get("stream") is True
    if options and not stream:
        raise RequestError(
            "Stream options can only be defined when `stream=True`. (parameter=stream_options)", param="stream_options"
        )
    if not stream or not isinstance(options, dict):
        return False, False
    include = options.get("include_usage") is True
    return include, include and options.get("continuous_usage_stats") is True


def _identity(
    cfg: SimConfig, body: dict[str, Any], prefix: str, request_id: str | None = None
) -> tuple[str, int, bytes | None]:
    """The response id (``prefix-`` and the client's ``X-Request-ID`` when it sent one, as vLLM
    does; else seeded or random), ``created``, and the seed digest."""
    digest = engine.request_digest(cfg.seed, body)
    if digest is None:
        rid = f"{prefix}-{request_id or uuid.uuid4().hex}"
        return rid, int(time.time()), None
    created = 1_700_000_000 + int.from_bytes(digest[:4], "big") % 100_000_000
    return f"{prefix}-{request_id or digest[:16].hex()}", created, digest


MAX_LOGPROBS = 20  # vLLM's default --max-logprobs


def _extras(body: dict[str, Any], chat: bool, prompts: list[str], n: int, fingerprint: str) -> wire.Extras:
    """What the request asks for beyond the text; refused as vLLM refuses it."""
    token_ids = body.get("return_token_ids") is True
    ids = tuple(tuple(engine.encode(p)) for p in prompts) if token_ids else ()
    if chat:
        wanted, top = body.get("logprobs"), body.get("top_logprobs")
        top_n = 0 if top is None else top
        if wanted not in (None, True, False):
            raise RequestError("logprobs must be a boolean", param="logprobs")
        if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 0):
            raise RequestError("`top_logprobs` must be a positive value.", param="top_logprobs")
        if top is not None and top > 0 and wanted is not True:
            raise RequestError("when using `top_logprobs`, `logprobs` must be set to true.", param="top_logprobs")
    else:
        top_value = body.get("logprobs")
        if top_value is not None and (isinstance(top_value, bool) or not isinstance(top_value, int) or top_value < 0):
            raise RequestError("logprobs must be a non-negative integer", param="logprobs")
        wanted, top_n = top_value is not None, top_value or 0
    if top_n > MAX_LOGPROBS:
        raise RequestError(
            f"Requested sample logprobs of {top_n}, which is greater than max allowed: {MAX_LOGPROBS}",
            param="logprobs",
        )
    return wire.Extras(
        logprobs=wanted is True, top_logprobs=top_n, token_ids=token_ids, prompt_ids=ids, n=n, fingerprint=fingerprint
    )


def _prompts(body: dict[str, Any]) -> list[str]:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        return [engine.decode(prompt)]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    raise RequestError("prompt must be a string, a list of strings or a list of token ids")


async def _generate(request: web.Request, chat: bool, api: str = "") -> web.StreamResponse:
    """A completion (``chat`` or not), or with ``api="responses"`` a Responses API answer."""
    cfg, metrics = request.app[SIM_CONFIG], request.app[SIM_METRICS]
    if request.app[SIM_SLEEP].level:
        raise RequestError("The engine is sleeping; POST /wake_up first", status=503)
    started = time.monotonic()
    body = await _json_body(request)
    model = _model(cfg, body)
    gen_body = body
    history: list[dict[str, Any]] = []
    if api == "responses":
        history = request.app[SIM_RESPONSES].history(body)
        prompt, gen_body = responses.prepare(body, history)
        prompts = [prompt]
    else:
        prompts = [engine.render_chat(body.get("messages"))] if chat else _prompts(body)
    prompt_tokens = sum(len(engine.encode(p)) for p in prompts)
    prefill_ms = 0.0
    if cfg.prefill_ms_per_token:
        cache = request.app[SIM_PREFIX]
        prefill_ms = cfg.prefill_ms_per_token * sum(cache.uncached(engine.encode(p)) for p in prompts)
    params = engine.parse_params(gen_body)
    rid, created, digest = _identity(cfg, body, "chatcmpl" if chat else "cmpl", request.headers.get("X-Request-ID"))
    if api == "responses":
        rid = "resp_" + uuid.uuid4().hex[:16]  # vLLM 0.32: random, whatever the request id
    longest = max(len(engine.encode(p)) for p in prompts)
    extras = _extras(gen_body, chat, prompts, params.n, cfg.fingerprint) if api != "responses" else wire.NONE
    words = engine.UNICODE_WORDS if cfg.split_writes else engine.WORDS
    choices = engine.generate(
        gen_body, params, longest, cfg.max_model_len, digest, count=len(prompts), reasoning=cfg.reasoning, words=words
    )
    completion_tokens = sum(c.tokens for c in choices)
    stream = body.get("stream") is True
    include_usage, continuous = stream_usage(body)
    metrics.prompt.inc(prompt_tokens)
    metrics.active += 1
    metrics.running.set(metrics.active)
    metrics.kv.set(min(1.0, metrics.active / cfg.capacity))
    reason = "abort"
    try:
        if not stream:
            steps = max((c.tokens for c in choices), default=0)
            await _sleep(prefill_ms + cfg.ttft_ms + cfg.itl_ms * max(0, steps - 1))
            metrics.generation.inc(completion_tokens)
            if api == "responses":
                made = responses.response(rid, created, model, body, choices[0], prompt_tokens)
                request.app[SIM_RESPONSES].keep(body, [*history, *responses.messages_of(body)], made)
                payload = orjson.dumps(made)
            else:
                make = wire.chat_completion if chat else wire.completion
                payload = make(rid, created, model, choices, prompt_tokens, extras)
            reason = choices[0].finish_reason if choices else "stop"
            return web.Response(body=payload, content_type="application/json")
        events: Iterable[list[bytes]]
        if api == "responses":
            events = responses.stream(rid, created, model, body, choices[0], prompt_tokens)
        else:
            make_stream: Callable[..., Iterator[list[bytes]]] = wire.chat_stream if chat else wire.completion_stream
            events = make_stream(rid, created, model, choices, prompt_tokens, include_usage, continuous, extras)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        first = True
        last = time.monotonic()
        for step in events:
            await _sleep(prefill_ms + cfg.ttft_ms if first else cfg.itl_ms)
            now = time.monotonic()
            if first:
                metrics.ttft.observe(now - started)
            else:
                metrics.itl.observe(now - last)
            last, first = now, False
            for data in step:
                for part in _parts(data) if cfg.split_writes else (data,):
                    await resp.write(part)
                    if cfg.split_writes:
                        await asyncio.sleep(0.001)  # its own TCP segment, so its own read
            metrics.generation.inc(len(step))
        reason = choices[0].finish_reason if choices else "stop"
        if api == "responses":
            made = responses.response(rid, created, model, body, choices[0], prompt_tokens)
            request.app[SIM_RESPONSES].keep(body, [*history, *responses.messages_of(body)], made)
        return resp
    finally:
        metrics.active -= 1
        metrics.running.set(metrics.active)
        metrics.kv.set(min(1.0, metrics.active / cfg.capacity))
        metrics.success.labels("0", reason, metrics.model).inc()
        metrics.e2e.observe(time.monotonic() - started)


def _parts(data: bytes) -> list[bytes]:
    """An event cut in three: inside its first multi-byte UTF-8 character (or in the middle when
    it has none), and just before its terminating blank line."""
    cut = next((i + 1 for i, b in enumerate(data) if b >= 0xC0), len(data) // 2)
    cuts = sorted({c for c in (cut, len(data) - 1) if 0 < c < len(data)})
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


async def _sleep(ms: float) -> None:
    if ms > 0:
        await asyncio.sleep(ms / 1000)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=False)


async def responses_(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=True, api="responses")


async def retrieve_response(request: web.Request) -> web.Response:
    kept = request.app[SIM_RESPONSES].get(request.match_info["response_id"])
    return web.Response(body=orjson.dumps(kept), content_type="application/json")


MAX_DIMENSIONS = 8192  # vLLM refuses more than the model has; no embedding model has more


async def embeddings(request: web.Request) -> web.Response:
    cfg = request.app[SIM_CONFIG]
    body = await _json_body(request)
    model = _model(cfg, body)
    value = body.get("input")
    if isinstance(value, str):
        inputs = [value]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        inputs = list(value)
    elif isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        inputs = [engine.decode(value)]
    else:
        raise RequestError("input must be a string, a list of strings or a list of token ids")
    dims = body.get("dimensions") or cfg.embedding_dim
    if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= MAX_DIMENSIONS:
        raise RequestError(f"dimensions must be an integer from 1 to {MAX_DIMENSIONS}", param="dimensions")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise RequestError("encoding_format must be 'float' or 'base64'", param="encoding_format")
    tokens = sum(len(engine.encode(t)) for t in inputs)
    rid, created, _ = _identity(cfg, body, "embd", request.headers.get("X-Request-ID"))
    data = [
        {"index": i, "object": "embedding", "embedding": _encoded(engine.embedding(t, dims), encoding)}
        for i, t in enumerate(inputs)
    ]
    payload = {
        "id": rid,
        "object": "list",
        "created": created,
        "model": model,
        "data": data,
        "usage": wire.usage(tokens, 0, "embedding"),
    }
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    """As vLLM sends it: floats, or base64 of little-endian float32s."""
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _permission_id(cfg: SimConfig, name: str) -> str:
    """vLLM's is random on every call; seeded, the simulator's is fixed (answers compare)."""
    if cfg.seed is None:
        return uuid.uuid4().hex[:16]
    return hashlib.sha256(f"{cfg.seed}:{name}".encode()).hexdigest()[:16]


def _cards(cfg: SimConfig) -> list[dict[str, Any]]:
    created = 1_700_000_000 if cfg.seed is not None else int(time.time())
    return [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": cfg.root,
            "parent": None,
            "max_model_len": cfg.max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{_permission_id(cfg, name)}",
                    "object": "model_permission",
                    "created": created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
        for name in cfg.models
    ]


async def models(request: web.Request) -> web.Response:
    cards = _cards(request.app[SIM_CONFIG])
    return web.Response(body=orjson.dumps({"object": "list", "data": cards}), content_type="application/json")


async def model(request: web.Request) -> web.Response:
    """One model card (the SDK's ``models.retrieve``); 404 ``NotFoundError`` for another name."""
    name = request.match_info["name"]
    for card in _cards(request.app[SIM_CONFIG]):
        if card["id"] == name:
            return web.Response(body=orjson.dumps(card), content_type="application/json")
    raise RequestError(not_found(request.app[SIM_CONFIG], name), status=404, param="model")


async def tokenize(request: web.Request) -> web.Response:
    cfg = request.app[SIM_CONFIG]
    body = await _json_body(request)
    if "messages" in body:
        text = engine.render_chat(body["messages"])
    elif isinstance(body.get("prompt"), str):
        text = body["prompt"]
    else:
        raise RequestError("tokenize needs 'prompt' (a string) or 'messages'")
    if body.get("model") is not None:
        _model(cfg, body)
    tokens = engine.encode(text)
    payload = {"count": len(tokens), "max_model_len": cfg.max_model_len, "tokens": tokens, "token_strs": None}
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


async def detokenize(request: web.Request) -> web.Response:
    body = await _json_body(request)
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
        raise RequestError("tokens must be a list of integers")
    return web.Response(body=orjson.dumps({"prompt": engine.decode(tokens)}), content_type="application/json")


async def health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def sleep(request: web.Request) -> web.Response:
    """``POST /sleep?level=1|2``: free the GPU memory (level 1 keeps the weights in host RAM)."""
    cfg, state = request.app[SIM_CONFIG], request.app[SIM_SLEEP]
    level = request.query.get("level", "1")
    if level not in ("1", "2"):
        raise RequestError(f"level must be 1 or 2, got {level}")
    async with state.lock:
        if not state.level:
            started = time.monotonic()
            await _sleep(cfg.sleep_ms)
            state.level = int(level)
            print(f"INFO It took {time.monotonic() - started:.6f} seconds to fall asleep.", flush=True)
    return web.Response(status=200)


async def wake_up(request: web.Request) -> web.Response:
    """``POST /wake_up``: weights back on the GPU (from host RAM, or reloaded after level 2)."""
    cfg, state = request.app[SIM_CONFIG], request.app[SIM_SLEEP]
    async with state.lock:
        if state.level:
            started = time.monotonic()
            await _sleep(cfg.wake_ms * (3 if state.level == 2 else 1))
            state.level = 0
            print(f"INFO It took {time.monotonic() - started:.6f} seconds to wake up tags None.", flush=True)
    return web.Response(status=200)


async def is_sleeping(request: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps({"is_sleeping": bool(request.app[SIM_SLEEP].level)}),
                        content_type="application/json")  # fmt: skip


async def version(request: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps({"version": VLLM_VERSION}), content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    m = request.app[SIM_METRICS]
    return web.Response(body=generate_latest(m.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


@web.middleware
async def errors(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    try:
        resp: web.StreamResponse = await handler(request)
        return resp
    except RequestError as exc:
        return _error(exc.message, exc.status, exc.param)
    except web.HTTPException as exc:
        return _error(exc.reason, exc.status)


def create_sim_app(cfg: SimConfig) -> web.Application:
    app = web.Application(middlewares=[errors], client_max_size=64 * 1024 * 1024)
    app[SIM_CONFIG] = cfg
    app[SIM_METRICS] = SimMetrics(cfg.models[0])
    app[SIM_SLEEP] = SleepState()
    app[SIM_PREFIX] = PrefixCache(cfg.prefix_cache_tokens)
    app[SIM_RESPONSES] = responses.Store(cfg.responses_store)
    if cfg.sleep_mode and os.environ.get("VLLM_SERVER_DEV_MODE") == "1":  # as vLLM: dev mode only
        app.router.add_post("/sleep", sleep)
        app.router.add_post("/wake_up", wake_up)
        app.router.add_get("/is_sleeping", is_sleeping)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/responses", responses_)
    app.router.add_get("/v1/responses/{response_id}", retrieve_response)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{name:.+}", model)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/detokenize", detokenize)
    app.router.add_get("/health", health)
    app.router.add_get("/version", version)
    app.router.add_get("/metrics", metrics)
    return app


# What vLLM prints while it starts, at the fraction of the start-up time it prints it.
STARTUP_LINES = (
    (0.0, "INFO [gpu_model_runner.py] Starting to load model {model}..."),
    (0.2, "INFO Loading safetensors checkpoint shards:  50% Completed | 2/4"),
    (0.4, "INFO Loading safetensors checkpoint shards: 100% Completed | 4/4"),
    (0.5, "INFO [default_loader.py] Loading weights took 0.52 seconds"),
    (0.6, "INFO [gpu_model_runner.py] Model loading took 0.0 GiB and 0.6 seconds"),
    (0.7, "INFO [kv_cache_utils.py] Maximum concurrency for {max_model_len} tokens per request: 256.00x"),
    (0.8, "INFO [gpu_model_runner.py] Capturing CUDA graphs (mixed prefill-decode, PIECEWISE): 100%"),
    (0.9, "INFO [gpu_model_runner.py] Graph capturing finished in 1 secs"),
)


async def load(cfg: SimConfig, startup_delay: float, fail: str | None = None) -> None:
    """Spend ``startup_delay`` seconds as vLLM spends its start-up (port closed), printing its
    log lines; with ``fail``, print that as vLLM prints a fatal error and exit 1 half-way."""
    said = 0.0
    for at, line in STARTUP_LINES:
        if fail is not None and at >= 0.5:
            print(f"ERROR [core.py] EngineCore failed to start: {fail}", flush=True)
            raise SystemExit(1)
        await asyncio.sleep(max(0.0, (at - said) * startup_delay))
        said = at
        print(line.format(model=cfg.models[0], max_model_len=cfg.max_model_len), flush=True)
    await asyncio.sleep((1 - said) * startup_delay)


async def serve(cfg: SimConfig, host: str, port: int, startup_delay: float = 0.0) -> web.AppRunner:
    """Start the simulator; the port stays closed for ``startup_delay`` seconds, as vLLM's does
    while it loads weights."""
    if startup_delay > 0:
        await asyncio.sleep(startup_delay)
    runner = web.AppRunner(create_sim_app(cfg), handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    return runner
