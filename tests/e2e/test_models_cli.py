"""``gwproxy profiles`` and ``gwproxy hardware`` as an operator runs them."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import gwproxy_run
from tests.switching import write_profile


def test_profiles_lists_the_bundled_ones_with_their_fit() -> None:
    out = gwproxy_run({}, "profiles", "--plan-for", "1 x A100 80GiB")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "10 profile(s) in profiles; fit for 1 x A100 (80 GiB):"
    assert any(line.startswith(" * deepseek-r1-distill-qwen-14b") and " fits " in line for line in lines)
    assert any("llama-3-70b-instruct " in line and "no_fit" in line for line in lines)


def test_profiles_exits_1_on_an_invalid_file(tmp_path: Path) -> None:
    write_profile(tmp_path, "ok")
    (tmp_path / "broken.yml").write_text("name: x\n")
    out = gwproxy_run({"GWPROXY_SWITCH_PROFILES_DIR": str(tmp_path)}, "profiles", "--json")
    assert out.returncode == 1
    assert [p["id"] for p in json.loads(out.stdout)["profiles"]] == ["ok"]
    assert "invalid profile: broken.yml: model: Missing data" in out.stderr


def test_hardware_plans_for_a_described_machine_and_probes_this_one() -> None:
    out = gwproxy_run({}, "hardware", "--plan-for", "2 x RTX 3090 24GiB", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["hardware"]["description"] == "2 x RTX 3090 (24 GiB)"
    first = report["recommendations"][0]
    assert (first["profile_id"], first["tensor_parallel"], first["verdict"]) == (
        "deepseek-r1-distill-qwen-14b",
        2,
        "fits",
    )
    here = gwproxy_run({}, "hardware")  # no GPU on the build machines: a valid answer, not an error
    assert here.returncode == 0 and "source:" in here.stdout
    bad = gwproxy_run({}, "hardware", "--plan-for", "lots of GPUs")
    assert bad.returncode == 2 and "expected e.g. '2 x RTX 3090 24GiB'" in bad.stderr
