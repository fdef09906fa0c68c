"""The console at /ui, in a real browser: Playwright (from PyPI) driving Debian's chromium
(``executable_path``; no browser is downloaded), against a live gateway process whose switcher
runs the simulator (process backend). Screenshots of every page go to tests/artifacts/ (not
committed)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import ADMIN_PASSWORD, Gateway, gwproxy_cli, provision
from tests.support.browser import CHROMIUM_FLAGS, chromium
from tests.support.procs import free_port, start_gateway
from tests.support.switching import write_test_profiles

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
SIM = "{python} -m gwproxy sim --ttft-ms 20 --itl-ms 10 --startup-delay 1"


@pytest.fixture(scope="module")
def console(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    import sys

    tmp = tmp_path_factory.mktemp("console")
    env, key = provision(tmp)
    gwproxy_cli(env, "user", "add", "bob", "--password-stdin", stdin="bob-password-1\n")
    write_test_profiles(tmp / "profiles")
    upstream = free_port()
    env = {
        **env,
        "GWPROXY_SWITCH_BACKEND": "process",
        "GWPROXY_SWITCH_PROFILES_DIR": str(tmp / "profiles"),
        "GWPROXY_SWITCH_HARDWARE": "1 x Test GPU 24GiB",
        "GWPROXY_SWITCH_PROCESS_COMMAND": SIM.format(python=sys.executable),
        "GWPROXY_SWITCH_STATE_DIR": str(tmp / "state"),
        "GWPROXY_SWITCH_VLLM_HOST": "127.0.0.1",
        "GWPROXY_SWITCH_READY_POLL": "0.2",
        "GWPROXY_SWITCH_STOP_ON_EXIT": "true",
        "GWPROXY_CAPTURE_SPOOL_DIR": str(tmp / "spool"),
        "GWPROXY_CAPTURE_BATCH_SECONDS": "0.05",
    }
    proc, port = start_gateway(log_dir, upstream, name="gw-console", env=env)
    proc.wait_http(f"http://127.0.0.1:{port}/health/ready", timeout=60)
    yield Gateway(proc, port, key, env)
    proc.stop()


def test_the_console_is_served_offline_with_security_headers(console: Gateway) -> None:
    r = httpx.get(f"{console.url}/ui/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
    assert "http://" not in r.text and "https://" not in r.text  # nothing fetched from elsewhere
    script = httpx.get(f"{console.url}/ui/console.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "https://" not in script.text.replace("http://www.w3.org/2000/svg", "")
    assert httpx.get(f"{console.url}/ui/nope.js").status_code == 404
    assert httpx.get(f"{console.url}/api/stats").status_code == 401
    stats = httpx.get(f"{console.url}/api/stats", headers=console.auth)
    assert stats.status_code == 200 and {"in_flight", "models", "recent"} <= set(stats.json())
    # A refused request (vLLM's 400) is a failed one on the Dashboard too, apart from server errors.
    bad = {"model": "current", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}
    assert httpx.post(f"{console.url}/v1/chat/completions", json=bad, headers=console.auth).status_code == 400
    rows = httpx.get(f"{console.url}/api/stats", headers=console.auth).json()["models"]
    assert any(r["errors"] >= r["server_errors"] + 1 for r in rows), rows


def _traffic(console: Gateway) -> None:
    body = {"model": "current", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}
    for _ in range(3):
        assert httpx.post(f"{console.url}/v1/chat/completions", json=body, headers=console.auth, timeout=30).is_success


def _users(console: Gateway) -> list[dict[str, Any]]:
    return list(httpx.get(f"{console.url}/api/admin/users", headers=console.auth).json()["data"])


def _role(console: Gateway, username: str) -> str:
    return str(next(u["role"] for u in _users(console) if u["username"] == username))


def _said(console: Gateway, title: str) -> list[dict[str, Any]]:
    """The messages of the admin's conversation with this title (there must be one)."""
    found = httpx.get(f"{console.url}/api/conversations", params={"q": title}, headers=console.auth).json()["data"]
    [conversation] = [c for c in found if c["title"] == title]
    full = httpx.get(f"{console.url}/api/conversations/{conversation['id']}", headers=console.auth).json()
    return list(full["messages"])


def users_table(page: Any) -> Any:
    return page.get_by_role("table", name="Users")


def test_an_admin_and_a_user_in_a_real_browser(console: Gateway) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    _traffic(console)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: d.accept())
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))

        def shot(name: str) -> None:
            page.screenshot(path=str(ARTIFACTS / f"console-{name}.png"), full_page=True)

        # A wrong password is said (it is a 401, like a session that ended, and used to show nothing).
        page.goto(f"{console.url}/ui")
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        expect(page.get_by_role("navigation", name="Pages")).to_be_hidden()  # no nav before signing in
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password").fill("not-the-password")
        page.get_by_label("Password").press("Enter")
        expect(page.get_by_text("Wrong username or password")).to_be_visible()
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        assert errors == ["Failed to load resource: the server responded with a status of 401 (Unauthorized)"]
        errors.clear()  # the browser's own line for the refused sign-in: expected, nothing else
        # Sign in with the keyboard: fields have labels, Enter submits.
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password").fill(ADMIN_PASSWORD)
        page.get_by_label("Password").press("Enter")
        expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
        token = page.evaluate("sessionStorage.getItem('access')")
        assert token and token not in page.url
        expect(page.get_by_text("GPU 0: Test GPU")).to_be_visible()
        expect(page.get_by_role("table", name="Running models")).to_contain_text("alpha")
        expect(page.get_by_role("table", name="Traffic by model")).to_contain_text("alpha")
        expect(page.get_by_role("table", name="Recent requests")).to_contain_text("/v1/chat/completions")
        shot("dashboard")
        page.set_viewport_size({"width": 400, "height": 900})
        shot("dashboard-400")
        assert page.evaluate("document.documentElement.scrollWidth") <= 400 + 1  # no sideways scroll
        page.set_viewport_size({"width": 1280, "height": 900})

        # Keys: create one (shown once, with a copy button), then revoke it. A double click makes one
        # key: the button is disabled while its request runs.
        page.get_by_role("link", name="Keys").click()
        page.get_by_label("Name").fill("from-the-browser")
        page.get_by_role("button", name="Create key").dblclick()
        expect(page.locator("#key-value")).to_contain_text("gwp-")
        expect(page.get_by_role("button", name="Create key")).to_be_enabled()
        made = httpx.get(f"{console.url}/api/auth/keys", headers=console.auth).json()["data"]
        assert [k["name"] for k in made].count("from-the-browser") == 1
        expect(page.get_by_role("button", name="Copy")).to_be_visible()
        shot("keys")
        page.get_by_role("button", name="Revoke key from-the-browser").click()
        row = page.get_by_role("row").filter(has_text="from-the-browser")
        expect(row).to_contain_text("revoked")
        # A key for one model, expiring in a week, with its own limits: what the form says is what it gets.
        first_key = page.locator("#key-value").inner_text()
        page.get_by_label("Name").fill("alpha-only")
        page.get_by_label("Expires in days").fill("7")
        page.get_by_label("Models (comma-separated)").fill("alpha")
        page.get_by_role("button", name="Create key").click()
        expect(page.locator("#key-value")).not_to_have_text(first_key)  # the new key's value, shown once
        alpha_key = page.locator("#key-value").inner_text()
        served = httpx.get(f"{console.url}/v1/models", headers={"Authorization": f"Bearer {alpha_key}"}).json()
        assert [m["id"] for m in served["data"]] == ["alpha"]
        row = page.get_by_role("row").filter(has_text="alpha-only")
        expect(row).to_contain_text("alpha")
        row.get_by_role("button", name=re.compile(r"^Limits of key \d+$")).click()
        keys = page.get_by_role("form", name="Limits of key alpha-only")
        keys.get_by_label("concurrency").fill("2")
        keys.get_by_role("button", name="Save limits").click()
        expect(page.get_by_text(re.compile(r"Limits of key alpha-only saved"))).to_be_visible()

        # Models: every profile with its fit; switch to beta and watch it reach ready.
        page.get_by_role("link", name="Models").click()
        expect(page.get_by_role("table", name="Profiles")).to_contain_text("does not fit")  # 'huge'
        page.get_by_role("button", name="Switch to beta").click()
        expect(page.get_by_text("Done — ready")).to_be_visible(timeout=60_000)
        expect(page.locator('[data-state="beta"]')).to_have_text("serving")  # the table is drawn again
        expect(page.get_by_role("button", name="Switch to beta")).to_be_disabled()
        shot("models")

        # Playground: a streamed reply from the new model, recorded as a conversation.
        page.get_by_role("link", name="Playground").click()
        page.get_by_label("Model", exact=True).select_option("beta")
        page.get_by_label("Message").fill("Say something")
        page.get_by_role("button", name="Send").click()
        expect(page.locator("#reply-1")).not_to_be_empty(timeout=30_000)
        shot("playground")

        page.get_by_role("link", name="Conversations").click()
        page.set_viewport_size({"width": 1280, "height": 300})  # a short window: the list fills it
        page.get_by_label("Search", exact=True).fill("Say")
        page.get_by_role("button", name="Search", exact=True).click()
        page.get_by_role("link", name="Say something").click()
        expect(page.locator("#conversation")).to_contain_text("Say something")
        expect(page.locator("#conversation h2")).to_be_in_viewport()  # opened where it can be seen
        expect(page.get_by_label("Search", exact=True)).to_have_value("Say")  # the search stays
        page.set_viewport_size({"width": 1280, "height": 900})
        shot("conversations")
        with page.expect_download() as download:
            page.get_by_role("button", name="Export Markdown").click()
        assert download.value.suggested_filename.endswith(".md")
        assert "Say something" in Path(download.value.path()).read_text()
        page.get_by_label("Search", exact=True).fill("nothing like this")
        page.get_by_role("button", name="Search", exact=True).click()
        expect(page.get_by_role("table", name="Conversations")).to_contain_text("nothing yet")
        page.get_by_role("link", name="Continue in the playground").click()  # the conversation, continued
        expect(page.locator("#chat")).to_contain_text("Say something")
        page.get_by_label("Message").fill("And more")
        page.get_by_role("button", name="Send").click()
        expect(page.locator("#reply-3")).not_to_be_empty(timeout=30_000)
        deadline = time.monotonic() + 10  # capture writes in batches: the turn lands in the same conversation
        while len(_said(console, "Say something")) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [m["role"] for m in _said(console, "Say something")] == ["user", "assistant", "user", "assistant"]
        # A send that fails leaves no empty bubble and gives the message back; New chat starts afresh.
        refused = {"error": {"message": "The model is loading", "type": "service_unavailable", "param": None,
                             "code": "model_not_ready"}}  # fmt: skip
        page.route("**/api/chat", lambda r: r.fulfill(status=503, json=refused, headers={"Retry-After": "2"}))
        bubbles = page.locator("#chat .msg").count()
        page.get_by_label("Message").fill("This one fails")
        page.get_by_role("button", name="Send").click()
        expect(page.get_by_role("alert")).to_contain_text("The model is loading")
        expect(page.locator("#chat .msg")).to_have_count(bubbles)
        expect(page.get_by_label("Message")).to_have_value("This one fails")
        page.unroute("**/api/chat")
        errors.clear()  # the browser's line for the refused request
        page.get_by_role("button", name="New chat").click()
        expect(page.locator("#chat .msg")).to_have_count(0)
        page.get_by_label("Message").fill("A new start")
        page.get_by_role("button", name="Send").click()
        expect(page.locator("#reply-1")).not_to_be_empty(timeout=30_000)
        deadline = time.monotonic() + 10
        search = f"{console.url}/api/conversations"
        while not httpx.get(search, params={"q": "A new start"}, headers=console.auth).json()["data"] or (
            len(_said(console, "A new start")) < 2
        ):
            assert time.monotonic() < deadline, "the new chat was not recorded"
            time.sleep(0.1)
        assert [m["role"] for m in _said(console, "A new start")] == ["user", "assistant"]  # a conversation of its own
        assert len(_said(console, "Say something")) == 4  # the earlier one did not grow

        # A page that cannot be built (a rate-limited user's model list) says so; the last page is
        # not left under the new page's link.
        page.get_by_role("link", name="Dashboard").click()
        expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
        limited = {"error": {"message": "Rate limit reached", "type": "rate_limit_error", "param": None,
                             "code": "rate_limit_exceeded"}}  # fmt: skip
        page.route("**/v1/models", lambda r: r.fulfill(status=429, json=limited, headers={"Retry-After": "3"}))
        page.get_by_role("link", name="Playground").click()
        expect(page.get_by_text("The playground page could not be shown.")).to_be_visible()
        expect(page.get_by_role("alert")).to_contain_text("Rate limit reached")
        expect(page.get_by_role("heading", name="Dashboard")).to_have_count(0)
        page.unroute("**/v1/models")
        errors.clear()  # the browser's line for the refused request
        page.get_by_role("link", name="Dashboard").click()
        page.set_viewport_size({"width": 400, "height": 500})  # a tall page in a small window:
        page.get_by_role("link", name="Usage").click()  # the header stays in view after navigating
        expect(page.locator("#usage-chart")).to_be_visible()
        assert page.evaluate("window.scrollY") == 0
        page.set_viewport_size({"width": 1280, "height": 900})
        expect(page.locator("#usage-chart")).to_be_visible()
        page.get_by_label("Whose").select_option("all")
        expect(page.get_by_role("table", name="Usage by day and model")).to_contain_text("alpha")
        expect(page.get_by_role("table", name="Usage by user")).to_contain_text("admin")  # summed, then per user
        page.get_by_label("Range").select_option("90")
        expect(page.get_by_text("Last 90 days:")).to_be_visible()
        shot("usage")
        page.get_by_role("button", name="Usage of admin").click()  # one user's chart, from the per-user table
        expect(page.get_by_label("Whose")).to_have_value(re.compile(r"^\d+$"))
        expect(page.locator("#usage-chart")).to_be_visible()

        page.get_by_role("link", name="Users").click()
        expect(page.get_by_role("table", name="Users")).to_contain_text("bob")
        shot("users")
        # Create a user, disable them, turn their capture off and give them limits, all from the page.
        page.get_by_label("Username").fill("carol")
        page.get_by_label("Password").fill("carol-password-1")
        page.get_by_role("button", name="Create user").click()
        expect(users_table(page)).to_contain_text("carol")
        page.get_by_label("Username").fill("carol")  # again: the 409 says so, in its own words
        page.get_by_label("Password").fill("carol-password-1")
        page.get_by_role("button", name="Create user").click()
        expect(page.get_by_role("alert")).to_contain_text("carol")
        expect(page.get_by_role("alert")).not_to_contain_text("Not now")
        # An admin's own demotion is refused: the select shows the role they still have.
        page.get_by_label("Role of admin", exact=True).select_option("user")
        expect(page.get_by_role("alert")).to_be_visible()
        expect(page.get_by_label("Role of admin", exact=True)).to_have_value("admin")
        assert len(errors) == 2 and all("responded with a status of" in e for e in errors), errors
        errors.clear()  # the browser's own lines for the two refused requests: expected
        page.get_by_role("button", name="Disable carol").click()
        expect(page.get_by_role("button", name="Enable carol")).to_be_visible()
        page.get_by_role("button", name="Turn capture off for carol").click()
        expect(page.get_by_role("button", name="Turn capture on for carol")).to_be_visible()
        page.get_by_role("button", name="Limits of carol").click()
        carols = page.get_by_role("form", name="Limits of carol")
        carols.get_by_label("tokens per minute").fill("1000")
        carols.get_by_role("button", name="Save limits").click()
        expect(page.get_by_text("Limits of carol saved.")).to_be_visible()
        carol = next(u for u in _users(console) if u["username"] == "carol")
        assert (carol["active"], carol["capture"]) == (False, False)
        limits = httpx.get(f"{console.url}/api/admin/users/{carol['id']}/limits", headers=console.auth).json()
        assert limits["overrides"]["tokens_per_minute"] == 1000
        page.get_by_role("button", name="Limits of bob").click()  # another's form: its own values
        expect(page.get_by_role("form", name="Limits of bob").get_by_label("tokens per minute")).to_have_value("")
        page.get_by_role("button", name="Limits of carol").click()  # the saved override is shown again
        expect(carols.get_by_label("tokens per minute")).to_have_value("1000")
        for role in ("admin", "user"):  # a role chosen in the table is the role the user gets
            page.get_by_label("Role of bob").select_option(role)
            deadline = time.monotonic() + 10
            while _role(console, "bob") != role and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _role(console, "bob") == role
        page.get_by_label("Find", exact=True).fill("bo")
        page.get_by_role("button", name="Find", exact=True).click()
        users = page.get_by_role("table", name="Users")
        expect(users.get_by_role("cell", name="bob", exact=True)).to_have_count(1)  # the page has come
        expect(users.get_by_role("cell", name="admin", exact=True)).to_have_count(0)  # only names from "bo"

        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('access')") is None

        # A user: no admin pages, no traffic panel.
        page.get_by_label("Username").fill("bob")
        page.get_by_label("Password").fill("bob-password-1")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
        expect(page.get_by_role("link", name="Users")).to_be_hidden()
        expect(page.get_by_role("table", name="Traffic by model")).to_have_count(0)
        page.goto(f"{console.url}/ui/#/users")
        expect(page.get_by_text("This page is for admins.")).to_be_visible()
        page.get_by_role("link", name="Models").click()
        expect(page.get_by_role("button", name="Switch to beta")).to_have_count(0)
        shot("user-models")
        browser.close()
    outside = [u for u in requests if not u.startswith(console.url)]
    assert not outside, outside  # no request leaves the gateway
    assert not errors, errors


def test_requests_in_flight_are_listed_and_cancelled_from_the_console(console: Gateway) -> None:
    """A long stream shows in the table (route, model, user, age, how far); Cancel aborts it: the
    caller's stream ends early and the simulator counts the generation as aborted."""
    from playwright.sync_api import expect, sync_playwright

    def aborted() -> float:
        metrics = httpx.get(f"{console.url}/health").json()["components"]["upstream"]["url"].rsplit("/v1", 1)[0]
        text = httpx.get(metrics + "/metrics").text
        found = re.findall(r'vllm:request_success_total\{engine="0",finished_reason="abort"[^}]*\} (\S+)', text)
        return sum(float(v) for v in found)

    before = aborted()
    got: list[bytes] = []

    def stream() -> None:
        body = {"model": "current", "messages": [{"role": "user", "content": "go on"}], "max_tokens": 1500,
                "ignore_eos": True, "stream": True}  # fmt: skip
        try:
            with httpx.stream("POST", f"{console.url}/v1/chat/completions", json=body, headers=console.auth,
                              timeout=120) as r:  # fmt: skip
                for chunk in r.iter_bytes():
                    got.append(chunk)
        except httpx.HTTPError:
            got.append(b"<cut>")

    caller = threading.Thread(target=stream)
    caller.start()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.on("dialog", lambda d: d.accept())
        page.goto(f"{console.url}/ui/")
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password").fill(ADMIN_PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
        page.get_by_role("link", name="In flight").click()
        table = page.get_by_role("table", name="Requests in flight")
        expect(table).to_contain_text("/v1/chat/completions")
        expect(table).to_contain_text("admin")
        expect(table).to_contain_text("chunk(s)")
        page.screenshot(path=str(ARTIFACTS / "console-requests.png"), full_page=True)
        # A user sees only their own requests, and cannot cancel another's.
        [running] = httpx.get(f"{console.url}/api/requests", headers=console.auth).json()["data"]
        login = httpx.post(f"{console.url}/api/auth/login", json={"username": "bob", "password": "bob-password-1"})
        bob = {"Authorization": f"Bearer {login.json()['access_token']}"}
        assert httpx.get(f"{console.url}/api/requests", headers=bob).json()["data"] == []
        assert httpx.delete(f"{console.url}/api/requests/{running['id']}", headers=bob).status_code == 404
        page.get_by_role("button", name=re.compile("^Cancel request")).click()
        expect(table).not_to_contain_text("/v1/chat/completions", timeout=10_000)
        browser.close()
    caller.join(timeout=30)
    assert not caller.is_alive()
    received = b"".join(got)
    # Ended as vLLM ends an aborted request: a finish event with finish_reason "abort", then [DONE]
    # — well short of the 1500 tokens (at 10 ms each, 15 s).
    events = [e for e in received.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]", received[-300:]
    last = orjson.loads(events[-2][len(b"data: ") :])
    assert last["choices"][0]["finish_reason"] == "abort" and last["choices"][0]["delta"] == {}
    assert last["id"] == orjson.loads(events[0][len(b"data: ") :])["id"]  # the same stream
    assert len(events) < 1500
    assert aborted() == before + 1  # vLLM was told: the generation stopped
