"""Every example in examples/ runs, as its README says, against `gwproxy demo`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import Proc, free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def demo(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("examples")
    port = free_port()
    proc = Proc(
        "demo-examples", ["demo", "--host", "127.0.0.1", "--port", str(port)], log_dir,
        env={"GWPROXY_DATABASE_SQLITE_PATH": str(tmp / "demo.db")},
    )  # fmt: skip
    try:
        banner = proc.wait_output("Press Ctrl-C to stop.")
        found = re.search(r'Demo user "demo" \(admin\), password (\S+), API key: (\S+)', banner)
        assert found, banner
        yield {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "GWPROXY_BASE_URL": f"http://127.0.0.1:{port}",
            "GWPROXY_API_KEY": found.group(2),
            "GWPROXY_USER": "demo",
            "GWPROXY_PASSWORD": found.group(1),
        }
    finally:
        proc.stop()


def run(env: dict[str, str], *args: str, cwd: Path | None = None) -> str:
    out = subprocess.run(list(args), capture_output=True, text=True, env=env, timeout=120, cwd=cwd)
    assert out.returncode == 0, f"{args} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_chat(demo: dict[str, str]) -> None:
    out = run(demo, sys.executable, str(EXAMPLES / "chat.py"))
    assert re.search(r"^reply: \S+", out, re.M) and re.search(r"^usage: \d+ prompt \+ \d+ completion tokens", out, re.M)
    assert len(out.split("streamed:")[1].split()) >= 2


def test_tools(demo: dict[str, str]) -> None:
    out = run(demo, sys.executable, str(EXAMPLES / "tools.py"))
    assert re.search(r"^tool call: get_weather \{'city': '.*'\}$", out, re.M), out


def test_agent_loop(demo: dict[str, str]) -> None:
    out = run(demo, sys.executable, str(EXAMPLES / "agent.py"))
    lines = out.strip().splitlines()
    assert lines[0].startswith("step 1: get_time(") and lines[-1].startswith("step 2: answer: "), out


def test_langchain(demo: dict[str, str]) -> None:
    out = run(demo, sys.executable, str(EXAMPLES / "langchain_chat.py"))
    assert re.search(r"^invoke: \S+", out, re.M) and len(out.split("stream:")[1].split()) >= 2


def test_admin_api_with_curl_switches_the_model(demo: dict[str, str], tmp_path: Path) -> None:
    out = run(demo, "bash", str(EXAMPLES / "admin.sh"), "demo-model-large", cwd=tmp_path)
    assert "serving: demo-model" in out and re.search(r"^job: [0-9a-f]{12}$", out, re.M)
    for state in ("stopping", "starting", "loading", "ready"):
        assert re.search(rf"^  {state} ", out, re.M), out
    assert "outcome: switched" in out and out.strip().endswith("now serving: demo-model-large")


def test_the_readme_says_what_each_example_needs_and_the_extra_installs_it() -> None:
    import tomllib

    readme = (EXAMPLES / "README.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line.split("|")[3].strip() for line in readme.splitlines()
            if line.startswith("| `")}  # fmt: skip
    assert set(rows) == {p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".sh")}
    extra = tomllib.loads((EXAMPLES.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    packages = {re.split(r"[<>=]", dep)[0] for dep in extra["examples"]}
    for name, needs in rows.items():
        for package in re.findall(r"pip install ([\w-]+)", needs):
            assert package in packages, (name, package)
    assert "pip install -e '.[examples]'" in readme
