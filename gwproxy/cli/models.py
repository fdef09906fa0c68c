"""Models on the command line: ``gwproxy profiles`` (validate and list, ``profiles new`` to add
one from a model's ``config.json``), ``gwproxy hardware`` (what the probe sees, every profile
ranked), and ``gwproxy models status | switch | events`` against a running gateway.

``profiles`` and ``hardware`` read only files and the GPU driver (exit 1 if a profile file is
invalid, so it can gate a deployment). ``models`` talks to the gateway at ``--url`` (default
``$GWPROXY_URL``, else http://127.0.0.1:8080) with the API key in ``$GWPROXY_API_KEY``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from gwproxy.cli.common import fail, json_flag, load, say, show
from gwproxy.config import Config, ConfigError
from gwproxy.switcher import planner
from gwproxy.switcher.context import hardware_source
from gwproxy.switcher.hardware import Hardware, SnapshotError, parse_snapshot
from gwproxy.switcher.profiles import ProfileSchema, load_profiles, parse_profile

PROFILE_COLUMNS = (("mark", ""), ("id", "PROFILE"), ("verdict", "FIT"), ("tp", "TP"), ("need", "NEED/GPU"),
                   ("model", "MODEL"))  # fmt: skip
RANK_COLUMNS = (("rank", "#"), ("profile_id", "PROFILE"), ("verdict", "FIT"), ("reason", "WHY"))


def _hardware(cfg: Config, plan_for: str | None) -> Hardware:
    if plan_for:
        return parse_snapshot(plan_for)
    return hardware_source(cfg)()


def cmd_profiles(cfg: Config, args: argparse.Namespace) -> int:
    if getattr(args, "profiles_command", None) == "new":
        return cmd_profiles_new(cfg, args)
    loaded = load_profiles(Path(cfg.switch.profiles_dir))
    hw = _hardware(cfg, args.plan_for)
    plans = {p.profile_id: p for p in planner.recommend(loaded.profiles.values(), hw, cfg.switch.reserve_gib)}
    if args.json:
        print(json.dumps({"hardware": hw.describe(), "profiles": [
            {**p.public(), "fit": plans[p.id].public()} for p in loaded.profiles.values()
        ], "problems": [str(x) for x in loaded.problems]}, indent=2))  # fmt: skip
    else:
        say(f"{len(loaded.profiles)} profile(s) in {cfg.switch.profiles_dir}; fit for {hw.describe()} (* default):")
        rows = [
            {
                "mark": "*" if p.default else "", "id": p.id, "verdict": plans[p.id].verdict,
                "tp": plans[p.id].tensor_parallel or "-", "model": p.model,
                "need": f"{plans[p.id].need_per_gpu / 2**30:.1f} GiB" if plans[p.id].need_per_gpu else "-",
            }
            for p in loaded.profiles.values()
        ]  # fmt: skip
        show(rows, PROFILE_COLUMNS, False)
    for problem in loaded.problems:
        print(f"invalid profile: {problem}", file=sys.stderr)
    return 1 if loaded.problems else 0


def cmd_hardware(cfg: Config, args: argparse.Namespace) -> int:
    hw = _hardware(cfg, args.plan_for)
    loaded = load_profiles(Path(cfg.switch.profiles_dir))
    ranked = planner.recommend(loaded.profiles.values(), hw, cfg.switch.reserve_gib)
    if args.json:
        out: dict[str, Any] = {"hardware": hw.public(), "recommendations": [p.public() for p in ranked]}
        print(json.dumps(out, indent=2))
        return 0
    print(f"{hw.describe()} (source: {hw.source}; driver {hw.driver_version or '-'}, CUDA {hw.cuda_version or '-'})")
    if hw.note:
        print(f"  {hw.note}")
    for g in hw.gpus:
        used = f", {g.memory_used / 2**30:.1f} GiB used" if g.memory_used is not None else ""
        print(f"  GPU {g.index}: {g.name}, {g.memory_total / 2**30:.1f} GiB{used}")
    print()
    show([{**p.public(), "rank": i} for i, p in enumerate(ranked, 1)], RANK_COLUMNS, False)
    return 0


# ---- profiles new ------------------------------------------------------------------------------

QUANT_METHODS = {
    "awq": "awq",
    "gptq": "gptq",
    "fp8": "fp8",
    "bitsandbytes": "bitsandbytes",
    "compressed-tensors": "fp8",
}


def estimate_parameters(config: dict[str, Any]) -> float:
    """Billions of parameters of a decoder-only transformer from its ``config.json``: embeddings
    (and an untied output head), attention projections, a gated MLP per layer (times the
    experts for a mixture of experts)."""
    hidden = int(config["hidden_size"])
    layers = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    kv = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    inter = int(config.get("intermediate_size") or 4 * hidden)
    vocab = int(config.get("vocab_size") or 32000)
    experts = int(config.get("num_local_experts") or config.get("n_routed_experts") or 1)
    attention = hidden * heads * head_dim * 2 + hidden * kv * head_dim * 2
    mlp = 3 * hidden * inter * experts
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return round((layers * (attention + mlp + 2 * hidden) + embeddings) / 1e9, 2)


def profile_from_config(hf_id: str, config: dict[str, Any], **chosen: Any) -> dict[str, Any]:
    """A profile mapping for ``hf_id`` whose architecture numbers come from ``config``
    (``text_config`` for multimodal models); ``chosen`` overrides what the config cannot say."""
    text = config.get("text_config") or config
    try:
        heads = int(text["num_attention_heads"])
        arch = {
            "parameters_b": chosen.get("parameters_b") or estimate_parameters(text),
            "layers": int(text["num_hidden_layers"]),
            "attention_heads": heads,
            "kv_heads": int(text.get("num_key_value_heads") or heads),
            "head_dim": int(text.get("head_dim") or int(text["hidden_size"]) // heads),
            "context": int(text.get("max_position_embeddings") or text.get("seq_length") or 4096),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"the config has no usable {exc} (is it a decoder-only language model's config.json?)"
        ) from None
    quant = (config.get("quantization_config") or {}).get("quant_method")
    dtype = str(text.get("torch_dtype") or config.get("torch_dtype") or "auto")
    pid = chosen.get("id") or re.sub(r"[^a-z0-9.]+", "-", hf_id.rsplit("/", 1)[-1].lower()).strip("-")
    profile: dict[str, Any] = {
        "name": chosen.get("name") or hf_id.rsplit("/", 1)[-1].replace("-", " "),
        "model": hf_id,
        "served_names": [pid],
        "architecture": arch,
        "dtype": dtype if dtype in ("bfloat16", "float16", "float32") else "auto",
        "max_model_len": min(arch["context"], chosen.get("max_model_len") or 32768),
        "gpu_memory_utilization": 0.9,
        "tensor_parallel": "auto",
    }
    if quant in QUANT_METHODS:
        profile["quantization"] = QUANT_METHODS[quant]
    return {"id": pid, **profile}


def cmd_profiles_new(cfg: Config, args: argparse.Namespace) -> int:
    try:
        config = json.loads(Path(args.from_config).read_text())
    except (OSError, ValueError) as exc:
        return fail(f"cannot read {args.from_config}: {exc}", 2)
    try:
        made = profile_from_config(
            args.hf_id, config, id=args.id, name=args.name, parameters_b=args.parameters_b,
            max_model_len=args.max_model_len,
        )  # fmt: skip
    except ValueError as exc:
        return fail(str(exc), 2)
    pid = made.pop("id")
    target = Path(args.dir or cfg.switch.profiles_dir) / f"{pid}.yml"
    if target.exists() and not args.force:
        return fail(f"{target} exists; --force replaces it, --id names another", 1)
    errors = ProfileSchema().validate(made)
    if errors:
        return fail(f"the profile made from {args.from_config} does not validate: {errors}", 2)
    estimated = "" if args.parameters_b else "  # estimated from config.json: set it if the model card says"
    text = yaml.safe_dump(made, sort_keys=False).replace(
        f"  parameters_b: {made['architecture']['parameters_b']}\n",
        f"  parameters_b: {made['architecture']['parameters_b']}{estimated}\n",
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"# Made by `gwproxy profiles new {args.hf_id} --from {args.from_config}`.\n" + text)
    parse_profile(pid, yaml.safe_load(target.read_text()), str(target))  # reads back as the gateway will
    print(target)
    say(
        f"profile {pid} written ({made['architecture']['parameters_b']} B parameters); check it with `gwproxy profiles`"
    )
    return 0


# ---- models: a running gateway ------------------------------------------------------------------


class GatewayCall(Exception):
    """A call to the gateway that failed; the message says what to do."""


def _request(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    url = args.url.rstrip("/") + path
    if not url.startswith(("http://", "https://")):
        raise GatewayCall(f"--url must be an http(s) URL, not {args.url!r}")
    key = os.environ.get("GWPROXY_API_KEY", "")
    headers = {"Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    if data is not None:
        headers["Content-Type"] = "application/json"
    try:
        request = urllib.request.Request(url, data, headers, method=method)  # noqa: S310 - http(s), checked above
        return urllib.request.urlopen(request, timeout=args.timeout)  # noqa: S310
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        hint = "; set GWPROXY_API_KEY to an admin's key" if exc.code in (401, 403) else ""
        raise GatewayCall(f"{method} {path}: {exc.code} {message}{hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise GatewayCall(f"no gateway answered at {args.url} ({reason}); pass --url or set GWPROXY_URL") from None


def _json(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    with _request(args, method, path, body) as resp:
        return json.loads(resp.read())


def _events(resp: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    kind = "message"
    for raw in resp:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            yield kind, json.loads(line[5:])


def _job_line(job: dict[str, Any]) -> str:
    done = f" → {job['outcome']}" if job.get("done") else ""
    error = f": {job['error']}" if job.get("error") else ""
    return f"{job['profile_id']:24} {job['state']:12} {job['progress'] * 100:3.0f}%  {job['phase']}{done}{error}"


def cmd_models_status(args: argparse.Namespace) -> int:
    status = _json(args, "GET", "/api/models/status")
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    up = status["upstream"]
    rows = [
        ("state", status["state"]),
        ("profile", status["current_profile"] or "-"),
        ("serving", ", ".join(status["served_models"]) or "-"),
        ("upstream", f"{up['url']} ({'reachable' if up['reachable'] else 'unreachable: ' + str(up['error'])})"),
        ("backend", status["backend"] or "none (proxying only)"),
        ("GPUs", status["hardware"]["description"]),
    ]
    if status.get("job"):
        rows.append(("last job", _job_line(status["job"])))
    if status.get("boot") and status["boot"].get("default"):
        boot = status["boot"]
        rows.append(("boot", f"default {boot['default']} did not fit; started {boot['started'] or 'nothing'}"))
    if status.get("error"):
        rows.append(("error", status["error"]))
    show([{"what": k, "value": v} for k, v in rows], (("what", "FIELD"), ("value", "VALUE")), False)
    return 0


def cmd_models_switch(args: argparse.Namespace) -> int:
    body = {"profile_id": args.profile, "dry_run": args.dry_run, "force": args.force}
    if args.dry_run or args.no_wait:
        answer = _json(args, "POST", "/api/models/switch", body)
        if args.json:
            print(json.dumps(answer, indent=2))
        else:
            job = answer["job"]
            print(job["plan"]["reason"] if args.dry_run and job.get("plan") else _job_line(job))
        return 0 if not args.dry_run or answer["job"]["plan"]["fits"] else 1
    with _request(args, "GET", "/api/models/events") as stream:  # listening before the job starts
        events = _events(stream)
        next(events)  # the status
        answer = _json(args, "POST", "/api/models/switch", body)
        job_id, job = answer["job"]["id"], answer["job"]
        if not args.json:
            say(f"job {job_id}{' (joined)' if answer['joined'] else ''}: switching to {args.profile}")
        while not job["done"]:
            try:
                kind, event = next(events)
            except StopIteration:
                break
            if kind == "job" and event["job"]["id"] == job_id:
                job = {**job, **{k: v for k, v in event["job"].items() if k != "history"}}
                if not args.json:
                    print(_job_line(job), flush=True)
    if args.json:
        print(json.dumps(job, indent=2))
    return 0 if job.get("outcome") in ("switched", "already_serving") else 1


def cmd_models_events(args: argparse.Namespace) -> int:
    path = "/api/models/events" + ("?follow=true" if args.follow else "")
    with _request(args, "GET", path) as stream:
        jobs: dict[str, dict[str, Any]] = {}
        for kind, event in _events(stream):
            if args.json:
                print(json.dumps({"event": kind, "data": event}), flush=True)
            elif kind == "status":
                job = event.get("job")
                print(f"state {event['state']}, profile {event['current_profile'] or '-'}", flush=True)
                if job:
                    jobs[job["id"]] = job
            else:
                job = jobs[event["job"]["id"]] = {**jobs.get(event["job"]["id"], {}), **event["job"]}
                print(_job_line(job), flush=True)
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    def bind(fn: Callable[[Config, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        def run(args: argparse.Namespace) -> int:
            try:
                return fn(load(args), args)
            except (SnapshotError, ConfigError) as exc:
                return fail(str(exc), 2)

        return run

    def remote(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        def run(args: argparse.Namespace) -> int:
            try:
                return fn(args)
            except GatewayCall as exc:
                return fail(str(exc))
            except KeyboardInterrupt:
                return 130

        return run

    for name, fn, text in (
        ("profiles", cmd_profiles, "validate the model profiles and show their fit for this host"),
        ("hardware", cmd_hardware, "show the GPUs found and every profile ranked for them"),
    ):
        cmd = sub.add_parser(name, parents=[common], help=text)
        cmd.add_argument(
            "--plan-for", metavar="GPUS", help="plan for other hardware: '2 x RTX 3090', '1 x A100 80GB', '2 x X 24GiB'"
        )
        json_flag(cmd)
        cmd.set_defaults(func=bind(fn))
        if name == "profiles":
            actions = cmd.add_subparsers(dest="profiles_command", metavar="ACTION")
            new = actions.add_parser(
                "new", parents=[common], help="write a profile from a model's config.json (architecture numbers filled)"
            )
            new.add_argument("hf_id", help="the model's Hugging Face id, e.g. Qwen/Qwen2.5-7B-Instruct")
            new.add_argument("--from", dest="from_config", required=True, metavar="CONFIG_JSON",
                             help="the model's config.json (downloaded from its model page)")  # fmt: skip
            new.add_argument("--id", help="profile id and served name (default: from the model id)")
            new.add_argument("--name", help="display name")
            new.add_argument("--parameters-b", type=float, help="billions of parameters (default: estimated)")
            new.add_argument("--max-model-len", type=int, help="context to serve (default: the model's, up to 32768)")
            new.add_argument("--dir", help="where to write it (default: switch.profiles_dir)")
            new.add_argument("--force", action="store_true", help="replace a profile with the same id")
            new.set_defaults(func=bind(cmd_profiles))

    models = sub.add_parser("models", help="status, switch and events of the models a running gateway serves")
    actions = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    def remote_parser(name: str, text: str) -> argparse.ArgumentParser:
        cmd: argparse.ArgumentParser = actions.add_parser(name, help=text)
        cmd.add_argument(
            "--url",
            default=os.environ.get("GWPROXY_URL", "http://127.0.0.1:8080"),
            help="the gateway (default $GWPROXY_URL or http://127.0.0.1:8080); the key comes from $GWPROXY_API_KEY",
        )
        cmd.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for an answer (default 30)")
        json_flag(cmd)
        return cmd

    status = remote_parser("status", "what is served, the last switch job, the upstream and the GPUs")
    status.set_defaults(func=remote(cmd_models_status))
    switch = remote_parser("switch", "switch the served model and follow the job until it is done (admin)")
    switch.add_argument("profile", help="the profile id (see gwproxy profiles)")
    switch.add_argument("--dry-run", action="store_true", help="only plan: say whether it fits and why")
    switch.add_argument("--force", action="store_true", help="start it even if the planner says it does not fit")
    switch.add_argument("--no-wait", action="store_true", help="start the job and return at once")
    switch.set_defaults(func=remote(cmd_models_switch))
    events = remote_parser("events", "print switch progress as it happens (until the job ends)")
    events.add_argument("--follow", action="store_true", help="keep printing across switches")
    events.set_defaults(func=remote(cmd_models_events), timeout=None)
