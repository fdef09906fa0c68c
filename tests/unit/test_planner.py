"""The planner against numbers worked out by hand (in the comments), for the bundled profiles."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gwproxy.switcher.hardware import GIB, parse_snapshot
from gwproxy.switcher.planner import kv_bytes_per_token, plan, recommend, weights_bytes
from gwproxy.switcher.profiles import load_profiles

PROFILES = load_profiles(Path(__file__).resolve().parents[2] / "profiles").profiles
ONE_24 = parse_snapshot("1 x RTX 3090 24GiB")
TWO_24 = parse_snapshot("2 x RTX 3090 24GiB")
ONE_80 = parse_snapshot("1 x A100 80GiB")


def gib(v: int) -> float:
    return round(v / GIB, 3)


def test_llama3_8b_fits_one_24gib_gpu() -> None:
    p = plan(PROFILES["llama-3-8b-instruct"], ONE_24)
    # weights 8.03e9 x 2 B = 16.06e9 B = 14.957 GiB; KV 2 x 32 layers x 8 heads x 128 x 2 B = 128 KiB
    # per token x 8192 = 1 GiB; + 1.5 reserve = 17.457 GiB of 24 x 0.9 = 21.6 GiB: 19 % left -> fits
    assert (p.verdict, p.tensor_parallel) == ("fits", 1)
    assert gib(p.weights_bytes) == 14.957
    assert p.kv_bytes_per_gpu == 1 * GIB
    assert gib(p.need_per_gpu) == 17.457
    assert gib(p.budget_per_gpu) == 21.6
    assert p.max_sequences == 5  # (21.6 - 14.957 - 1.5) / 1 GiB


def test_r1_distill_14b_needs_two_24gib_gpus() -> None:
    profile = PROFILES["deepseek-r1-distill-qwen-14b"]
    one = plan(profile, ONE_24)
    # 14.77e9 x 2 B = 27.51 GiB of weights alone exceed 21.6 GiB
    assert one.verdict == "no_fit" and "21.6 GiB" in one.reason
    two = plan(profile, TWO_24)
    # tp 2 (40 heads divisible): weights 13.756 GiB + KV 2 x 48 x 4 x 128 x 2 B x 32768 = 3 GiB + 1.5 = 18.256
    assert (two.verdict, two.tensor_parallel) == ("fits", 2)
    assert two.kv_bytes_per_gpu == 3 * GIB
    assert gib(two.need_per_gpu) == 18.256
    big = plan(profile, ONE_80)
    # 27.511 + 6 + 1.5 = 35.011 GiB of 72
    assert (big.verdict, big.tensor_parallel, gib(big.need_per_gpu)) == ("fits", 1, 35.011)


def test_llama3_70b_bf16_needs_more_than_two_24gib_gpus() -> None:
    profile = PROFILES["llama-3-70b-instruct"]
    two = plan(profile, TWO_24)
    # 70.55e9 x 2 B = 131.41 GiB; at tp 2: 65.70 + KV 2 x 80 x 4 x 128 x 2 B x 8192 = 1.25 + 1.5 = 68.45 > 21.6
    assert two.verdict == "no_fit" and two.tensor_parallel == 2
    assert gib(two.need_per_gpu) == 68.455
    assert "43.2 GiB in all" in two.reason
    assert plan(profile, ONE_80).verdict == "no_fit"  # 131.4 + 2.5 + 1.5 > 72
    assert plan(profile, parse_snapshot("2 x H100 80GiB")).verdict == "tight"  # 68.45 of 72 per GPU


def test_phi3_mini_and_coder_33b() -> None:
    phi = plan(PROFILES["phi-3-mini-4k-instruct"], ONE_24)
    # 3.82e9 x 2 B = 7.115 GiB; KV 2 x 32 x 32 x 96 x 2 B = 384 KiB x 4096 = 1.5 GiB; + 1.5 = 10.115
    assert (phi.verdict, gib(phi.need_per_gpu), phi.kv_bytes_per_gpu) == ("fits", 10.115, int(1.5 * GIB))
    coder = plan(PROFILES["deepseek-coder-33b-instruct"], ONE_80)
    # 33.34e9 x 2 B = 62.101 GiB; KV 2 x 62 x 8 x 128 x 2 B x 16384 = 3.875 GiB; + 1.5 = 67.476 of 72: 6 % left
    assert (coder.verdict, gib(coder.need_per_gpu)) == ("tight", 67.476)


def test_awq_uses_the_measured_checkpoint_size() -> None:
    p = plan(PROFILES["llama-3-70b-instruct-awq"], TWO_24)
    # 37.1 GiB / 2 = 18.55 + KV 1.25 + 1.5 = 21.3 of 24 x 0.92 = 22.08 -> tight
    assert (p.verdict, p.tensor_parallel, gib(p.need_per_gpu)) == ("tight", 2, 21.3)
    estimate = replace(PROFILES["llama-3-70b-instruct-awq"], weights_gib=None)
    assert gib(weights_bytes(estimate)) == 32.852  # 70.55e9 x 0.5 B: the estimate a profile can correct


def test_tensor_parallel_must_divide_the_attention_heads() -> None:
    qwen = PROFILES["qwen2-7b-instruct"]  # 28 heads: tp 1, 2, 4 possible, 8 not
    # 8 GPUs of 8 GiB (7.2 usable): tp 2 needs 7.1 + 0.875 + 1.5 = 9.47; tp 4 needs 3.55 + 0.44 + 1.5 = 5.49
    assert plan(qwen, parse_snapshot("8 x 8GiB")).tensor_parallel == 4
    small = plan(qwen, parse_snapshot("8 x 4GiB"))  # tp 4 does not fit 3.6 GiB and tp 8 is impossible
    assert (small.verdict, small.tensor_parallel) == ("no_fit", 4)
    fixed = plan(replace(qwen, tensor_parallel=8), parse_snapshot("8 x 80GiB"))
    assert fixed.verdict == "no_fit" and "does not divide the 28 attention heads" in fixed.reason
    assert "this host has 2 GPU(s)" in plan(replace(qwen, tensor_parallel=4), TWO_24).reason


def test_kv_heads_are_replicated_beyond_their_count() -> None:
    qwen = PROFILES["qwen2-7b-instruct"]  # 4 KV heads
    assert kv_bytes_per_token(qwen, 8) == kv_bytes_per_token(qwen, 4) == kv_bytes_per_token(qwen, 1) // 4
    fp8 = replace(qwen, kv_cache_dtype="fp8")
    assert kv_bytes_per_token(fp8, 1) == kv_bytes_per_token(qwen, 1) // 2


def test_no_gpu_is_a_plan_too() -> None:
    p = plan(PROFILES["phi-3-mini-4k-instruct"], parse_snapshot("none"))
    assert p.verdict == "no_fit" and p.tensor_parallel is None and "no GPU" in p.reason


def test_recommendations_rank_headroom_then_tight_then_closest() -> None:
    ranked = [p.profile_id for p in recommend(PROFILES.values(), TWO_24)]
    assert ranked == [
        "deepseek-r1-distill-qwen-14b",  # fits, the largest models first
        "qwen2.5-14b-instruct",
        "llama-3-8b-instruct",
        "qwen2-7b-instruct",
        "codellama-7b-instruct",
        "deepseek-coder-6.7b-instruct",
        "phi-3-mini-4k-instruct",
        "llama-3-70b-instruct-awq",  # tight
        "deepseek-coder-33b-instruct",  # no fit, closest first
        "llama-3-70b-instruct",
    ]


@pytest.mark.parametrize("hw", ["1 x RTX 3090 24GiB", "2 x RTX 3090 24GiB", "1 x A100 80GiB", "none"])
def test_every_profile_gets_a_plan_with_a_reason(hw: str) -> None:
    plans = recommend(PROFILES.values(), parse_snapshot(hw))
    assert len(plans) == len(PROFILES) == 10
    assert all(p.reason for p in plans)
    assert all(p.public()["headroom_gib_per_gpu"] >= 0 for p in plans if p.fits)
