"""``gwproxy profiles`` and ``gwproxy hardware`` as an operator runs them."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import gwproxy_run
from tests.support.switching import write_profile


def test_profiles_lists_the_bundled_ones_with_their_fit() -> None:
    out = gwproxy_run({}, "profiles", "--plan-for", "1 x A100 80GiB")
    assert out.returncode == 0, out.stderr
    assert out.stderr.startswith("10 profile(s) in profiles; fit for 1 x A100 (80 GiB) (* default):")
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["PROFILE", "FIT", "TP", "NEED/GPU", "MODEL"]
    assert any(line.split()[:3] == ["*", "deepseek-r1-distill-qwen-14b", "fits"] for line in lines)
    assert any(line.split()[:2] == ["llama-3-70b-instruct", "no_fit"] for line in lines)


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
    assert bad.returncode == 2 and "unknown GPU" in bad.stderr and "e.g. '2 x RTX 3090'" in bad.stderr
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


QWEN_CONFIG = {  # Qwen2.5-7B-Instruct's config.json, as its model page serves it
    "architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584, "intermediate_size": 18944,
    "max_position_embeddings": 32768, "num_attention_heads": 28, "num_hidden_layers": 28,
    "num_key_value_heads": 4, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 152064,
}  # fmt: skip


def test_profiles_new_fills_the_architecture_from_config_json(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(QWEN_CONFIG))
    env = {"GWPROXY_SWITCH_PROFILES_DIR": str(tmp_path / "profiles")}
    out = gwproxy_run(env, "profiles", "new", "Qwen/Qwen2.5-7B-Instruct", "--from", str(config))
    assert out.returncode == 0, out.stderr
    written = Path(out.stdout.strip())
    assert written == tmp_path / "profiles" / "qwen2.5-7b-instruct.yml"
    listed = json.loads(gwproxy_run(env, "profiles", "--json", "--plan-for", "1 x RTX 4090").stdout)
    [profile] = listed["profiles"]
    arch = profile["architecture"]
    assert (arch["layers"], arch["attention_heads"], arch["kv_heads"], arch["head_dim"]) == (28, 28, 4, 128)
    assert 7.0 < arch["parameters_b"] < 8.0  # Qwen2.5-7B has 7.62 B
    assert (profile["dtype"], profile["max_model_len"], profile["served_names"]) == (
        "bfloat16", 32768, ["qwen2.5-7b-instruct"],
    )  # fmt: skip
    again = gwproxy_run(env, "profiles", "new", "Qwen/Qwen2.5-7B-Instruct", "--from", str(config))
    assert again.returncode == 1 and "--force" in again.stderr
    quantized = {**QWEN_CONFIG, "quantization_config": {"quant_method": "awq", "bits": 4}}
    config.write_text(json.dumps(quantized))
    out = gwproxy_run(env, "profiles", "new", "Qwen/Qwen2.5-7B-Instruct-AWQ", "--from", str(config),
                      "--parameters-b", "7.62", "--max-model-len", "8192")  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = Path(out.stdout.strip()).read_text()
    assert "quantization: awq" in text and "max_model_len: 8192" in text and "parameters_b: 7.62\n" in text
    config.write_text(json.dumps({"model_type": "bert"}))
    bad = gwproxy_run(env, "profiles", "new", "x/y", "--from", str(config))
    assert bad.returncode == 2 and "no usable" in bad.stderr
