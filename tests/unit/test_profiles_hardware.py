"""Profile validation (file, field, reason; the rest still load) and hardware snapshots/parsing."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gwproxy.switcher.hardware import MIB, SnapshotError, parse_smi_csv, parse_snapshot, probe
from gwproxy.switcher.profiles import load_profiles

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
name: Tiny
model: org/tiny
served_names: [tiny, tiny-alias]
architecture: {parameters_b: 0.5, layers: 4, attention_heads: 8, kv_heads: 2, head_dim: 64, context: 2048}
max_model_len: 1024
extra_args: [--enable-prefix-caching]
env: {VLLM_LOGGING_LEVEL: DEBUG}
"""


def test_bundled_profiles_all_load_with_one_default() -> None:
    loaded = load_profiles(ROOT / "profiles")
    assert loaded.problems == ()
    assert len(loaded.profiles) == 10
    assert loaded.default is not None and loaded.default.id == "deepseek-r1-distill-qwen-14b"
    assert loaded.by_served_name("qwen2-7b-instruct") is loaded.profiles["qwen2-7b-instruct"]
    r1 = loaded.profiles["deepseek-r1-distill-qwen-14b"]
    assert r1.model == "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B"
    assert list(r1.extra_args) == ["--reasoning-parser", "deepseek_r1"]


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        ("name: x\n", "model", "Missing data"),
        (GOOD.replace("max_model_len: 1024", "max_model_len: 4096"), "max_model_len", "exceeds the model's native"),
        (GOOD + "tensor_parallel: 3\n", "tensor_parallel", "power of two"),
        (GOOD + "dtype: int3\n", "dtype", "Must be one of"),
        (GOOD + "colour: blue\n", "colour", "Unknown field"),
        (GOOD.replace("kv_heads: 2", "kv_heads: 3"), "architecture.kv_heads", "must divide attention_heads"),
        (GOOD.replace("layers: 4", "layers: four"), "architecture.layers", "Not a valid integer"),
        (GOOD + "gpu_memory_utilization: 1.5\n", "gpu_memory_utilization", "less than or equal to 0.99"),
        ("- just\n- a list\n", "-", "YAML mapping"),
        ("name: [unclosed\n", "-", "not valid YAML"),
    ],
)
def test_an_invalid_profile_is_reported_and_the_others_load(tmp_path: Path, text: str, field: str, reason: str) -> None:
    (tmp_path / "good.yml").write_text(GOOD)
    (tmp_path / "bad.yaml").write_text(text)
    loaded = load_profiles(tmp_path)
    assert list(loaded.profiles) == ["good"]
    (problem,) = loaded.problems
    assert (problem.file, problem.field) == ("bad.yaml", field)
    assert reason in problem.reason, problem.reason
    assert str(problem).startswith(f"bad.yaml: {field}: ")


def test_profile_fields_and_vllm_arguments(tmp_path: Path) -> None:
    (tmp_path / "tiny.yml").write_text(GOOD + "quantization: awq\nkv_cache_dtype: fp8\n")
    p = load_profiles(tmp_path).profiles["tiny"]
    assert p.served_names == ("tiny", "tiny-alias") and p.tensor_parallel is None and p.weight_format == "awq"
    assert p.env == (("VLLM_LOGGING_LEVEL", "DEBUG"),)
    args = p.vllm_args("0.0.0.0", 8000, 2)
    assert args[:5] == ["--model", "org/tiny", "--served-model-name", "tiny", "tiny-alias"]
    pairs = (
        ["--port", "8000"],
        ["--tensor-parallel-size", "2"],
        ["--quantization", "awq"],
        ["--kv-cache-dtype", "fp8"],
    )
    for pair in pairs:
        i = args.index(pair[0])
        assert args[i : i + 2] == pair
    assert args[-1] == "--enable-prefix-caching"
    assert p.public()["tensor_parallel"] == "auto"


def test_two_defaults_are_a_problem(tmp_path: Path) -> None:
    (tmp_path / "a.yml").write_text(GOOD + "default: true\n")
    (tmp_path / "b.yml").write_text(GOOD + "default: true\n")
    loaded = load_profiles(tmp_path)
    assert len(loaded.profiles) == 2
    assert [p.field for p in loaded.problems] == ["default"]


def test_missing_directory_is_empty_not_an_error(tmp_path: Path) -> None:
    loaded = load_profiles(tmp_path / "nope")
    assert loaded.profiles == {} and loaded.default is None


@pytest.mark.parametrize(
    ("text", "count", "name", "mib"),
    [
        ("2 x RTX 3090 24GiB", 2, "RTX 3090", 24576),  # the card's own memory: 24 GiB is its size
        ("2x3090", 2, "RTX 3090", 24576),  # a card, not two 3,090 GiB GPUs
        ("RTX 4090", 1, "RTX 4090", 24564),
        ("1 x NVIDIA GeForce RTX 4090", 1, "RTX 4090", 24564),
        ("1× H100 80GB", 1, "H100", 81559),
        ("1 x A100 80GB", 1, "A100", 81920),
        ("2 x a100-40gb", 2, "A100", 40960),
        ("4 * L4", 4, "L4", 23034),
        ("A10G 22.5GiB", 1, "A10G", 23028),  # near its sold size (24 GB): the card's own figure
        ("1 x RTX 3090 20GiB", 1, "RTX 3090", 20480),  # not a size it is sold in: as stated
        ("2 x MyGPU 24GiB", 2, "MyGPU", 24576),
        ("1 x MyGPU 80GB", 1, "MyGPU", 80 * 10**9 // MIB),  # GB is 10^9 bytes, not GiB
        ("1 x T4 16000MiB", 1, "T4", 16000),
    ],
)
def test_snapshot_descriptions(text: str, count: int, name: str, mib: int) -> None:
    hw = parse_snapshot(text)
    assert hw.source == "snapshot" and len(hw.gpus) == count
    assert {g.name for g in hw.gpus} == {name}
    assert hw.gpus[0].memory_total // MIB == mib
    assert [g.index for g in hw.gpus] == list(range(count))


def test_snapshot_mixed_groups_none_and_errors() -> None:
    hw = parse_snapshot("1 x H100 80GiB, 2 x L4 24GiB")
    assert [g.name for g in hw.gpus] == ["H100", "L4", "L4"]
    assert hw.describe() == "1 x H100 (80 GiB), 2 x L4 (22 GiB)"
    assert parse_snapshot("none").gpus == () and parse_snapshot("none").describe() == "no GPU"
    assert [g.name for g in parse_snapshot("1 x H100 + 1 x RTX 4090").gpus] == ["H100", "RTX 4090"]
    refused = {
        "two RTX 3090": "is '3090' a memory size",
        "0 x A100 80GiB": "count of 1 or more",
        "": "no GPU described",
        "1 x A100": "several sizes",  # 40 or 80 GB
        "2x24": "is '24' a memory size",  # no unit, no card
        "1 x MyGPU 24G": "GiB (2^30 bytes) or GB",
        "1 x MyGPU": "unknown GPU",
    }
    for bad, why in refused.items():
        with pytest.raises(SnapshotError) as caught:
            parse_snapshot(bad)
        assert why in str(caught.value), (bad, caught.value)
        assert "e.g." in str(caught.value) or "say which" in str(caught.value)


SMI = """0, NVIDIA GeForce RTX 3090, 24576, 1024, 23312, 7, 45, 31.52, 550.54.15
1, NVIDIA GeForce RTX 3090, 24576, [N/A], [N/A], [N/A], 44, [N/A], 550.54.15
"""


def test_nvidia_smi_csv() -> None:
    gpus, driver = parse_smi_csv(SMI)
    assert driver == "550.54.15"
    assert gpus[0].memory_total == 24576 * MIB and gpus[0].memory_used == 1024 * MIB
    assert (gpus[0].utilization, gpus[0].temperature, gpus[0].power_watts) == (7, 45, 31.52)
    assert (gpus[1].memory_used, gpus[1].utilization, gpus[1].power_watts) == (None, None, None)
    with pytest.raises(ValueError, match="unexpected nvidia-smi line"):
        parse_smi_csv("0, only, three")


def test_probe_without_nvml_falls_back_to_nvidia_smi(tmp_path: Path) -> None:
    # No NVIDIA driver here, so NVML fails to load; an executable answering as nvidia-smi does
    # stands in for the binary (the NVML path itself is exercised by bench/gpu_probe.py on a GPU).
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        f"if [ $# -gt 0 ]; then printf '%s' '{SMI}'; else echo '| NVIDIA-SMI 550.54.15  Driver Version: 550.54.15  "
        "CUDA Version: 12.4 |'; fi\n"
    )
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    hw = probe(str(smi))
    assert (hw.source, len(hw.gpus), hw.driver_version, hw.cuda_version) == ("nvidia-smi", 2, "550.54.15", "12.4")
    none = probe(str(tmp_path / "absent"))
    assert none.source == "none" and none.gpus == () and "NVML" in (none.note or "")
    assert os.path.basename(str(smi)) == "nvidia-smi"
