"""API documentation: /openapi.json (valid OpenAPI 3.1, every route documented), /docs (served
offline, rendered by headless Chromium), and Schemathesis fuzzing a live gateway against it."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from gwproxy.docs import document, operations
from tests.conftest import Gateway, provision, start_app
from tests.support.browser import chromium
from tests.support.procs import start_gateway

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
UNDOCUMENTED = {"/", "/health", "/health/ready", "/metrics", "/openapi.json", "/docs"}


async def test_the_document_is_valid_openapi_31_and_covers_every_api_route(sim: int) -> None:
    server = await start_app(sim)
    client = TestClient(server)
    await client.start_server()
    try:
        served = await (await client.get("/openapi.json")).json()
        routes = {
            (r.method.lower(), r.resource.canonical)
            for r in server.app.router.routes()
            if r.resource is not None and r.resource.canonical.startswith("/api/") and r.method != "HEAD"
        }
    finally:
        await client.close()
    assert served == document(server.app)
    assert served["openapi"] == "3.1.0"
    validate(served)
    documented = {(item.method, item.path) for item in operations(server.app) if item.path.startswith("/api/")}
    assert routes == documented, f"undocumented: {routes - documented}; gone: {documented - routes}"
    chat = served["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatRequest"}
    assert chat["security"] == [{"bearer": []}, {"apiKey": []}]
    assert served["paths"]["/api/auth/login"]["post"]["security"] == []
    for path, methods in served["paths"].items():
        for method, op in methods.items():
            errors = [code for code in op["responses"] if code.startswith(("4", "5"))]
            assert errors, f"{method} {path} documents no error"
            for code in errors:
                schema = op["responses"][code]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}, (method, path, code)


async def test_docs_page_is_served_from_installed_assets_and_follows_the_setting(sim: int) -> None:
    for env, on in (({"DEBUG": "true"}, True), ({}, False), ({"GWPROXY_SERVER_DOCS": "true"}, True),
                    ({"DEBUG": "true", "GWPROXY_SERVER_DOCS": "false"}, False)):  # fmt: skip
        server = await start_app(sim, **env)
        client = TestClient(server)
        await client.start_server()
        try:
            page = await client.get("/docs")
            assert (page.status == 200) is on, env
            asset = await client.get("/docs/static/swagger-ui-bundle.js")
            assert (asset.status == 200) is on
            if on:
                html = await page.text()
                assert (
                    'src="/docs/static/swagger-ui-bundle.js"' in html and "//cdn" not in html and "https:" not in html
                )
                assert len(await asset.read()) > 500_000
                assert "SwaggerUIBundle" in await (await client.get("/docs/static/docs-init.js")).text()
            else:  # off: says how to turn it on
                body = await page.json()
                assert page.status == 404 and body["error"]["code"] == "docs_disabled"
                assert "GWPROXY_SERVER_DOCS=true" in body["error"]["message"]
            assert (await client.get("/openapi.json")).status == 200  # always
        finally:
            await client.close()


@pytest.fixture(scope="module")
def docs_gateway(log_dir: Path, sim: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    env, key = provision(tmp_path_factory.mktemp("docs"))
    env = {**env, "DEBUG": "true", "GWPROXY_RATELIMIT_ENABLED": "false",
           "GWPROXY_CAPTURE_SPOOL_DIR": str(tmp_path_factory.mktemp("docs-spool"))}  # fmt: skip
    proc, port = start_gateway(log_dir, sim, name="gw-docs", env=env)
    yield Gateway(proc, port, key, env)
    proc.stop()


def test_docs_render_in_headless_chromium(docs_gateway: Gateway, tmp_path: Path) -> None:
    browser = chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "docs.png"
    shot.unlink(missing_ok=True)
    common = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--window-size=1280,2400",
    ]  # fmt: skip
    url = f"{docs_gateway.url}/docs"
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert "swagger-ui" in html and "opblock" in html, html[:2000]
    for path in ("/api/models/switch", "/api/conversations/{conversation_id}", "/v1/chat/completions", "/api/chat"):
        assert path in html.replace("\u200b", ""), path  # Swagger UI breaks long paths with zero-width spaces
    served = httpx.get(f"{docs_gateway.url}/openapi.json").json()
    count = sum(len(methods) for methods in served["paths"].values())
    assert html.count('class="opblock-summary-method"') == count, "one block per documented operation"
    picture = subprocess.run([*common, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert picture.returncode == 0, picture.stderr[-2000:]
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_schemathesis_finds_no_server_errors_and_no_schema_violations(docs_gateway: Gateway) -> None:
    st = Path(sys.executable).with_name("st")
    cmd = [
        str(st), "run", f"{docs_gateway.url}/openapi.json",
        "-H", f"Authorization: Bearer {docs_gateway.key}",
        "--checks", "not_a_server_error,response_schema_conformance",
        "--max-examples", "6", "--seed", "20261126", "--no-shrink", "--workers", "1",
        "--request-timeout", "30", "--phases", "examples,coverage,fuzzing",
        # The event stream never ends by design (it is exercised by the switching tests).
        "--exclude-path", "/api/models/events",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    report = out.stdout[-8000:] + out.stderr[-2000:]
    assert out.returncode == 0, report
    served = httpx.get(f"{docs_gateway.url}/openapi.json").json()
    count = sum(len(methods) for methods in served["paths"].values())
    tested = re.search(r"Tested: (\d+)", out.stdout)
    assert tested and int(tested.group(1)) == count - 1, report  # all but the event stream
    cases = re.search(r"(\d+) generated, (\d+) passed", out.stdout)
    assert cases and cases.group(1) == cases.group(2) and int(cases.group(1)) > 300, report
