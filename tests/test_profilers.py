"""Profilers: analytic costs, NVIDIA exactness, calibration, memory, library costs, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import SUPER_49B
from puzzlekit.profilers import (
    CATALOGUE,
    NVLABS_MEMORY,
    Hardware,
    architecture_cost,
    attention_work,
    block_costs,
    ffn_work,
    get_hardware,
    load_hardware_profile,
    profile_library,
    roofline_latency,
    save_hardware_profile,
    subblock_memory_bytes,
)
from puzzlekit.profilers.calibrate import calibrate_nvlabs, fit_factors, mape, nelder_mead

import puzzlekit as pk
from puzzlekit.errors import ConfigError

LLAMA70 = pk.ParentSpec(hidden_size=8192, num_attention_heads=64, num_key_value_heads=8, head_dim=128,
                        intermediate_size=28672, vocab_size=128256, num_hidden_layers=80)
H100_SC = pk.Scenario("h100-sxm", "fp8", batch=256, prefill=1000, decode=200)
TINY = pk.ParentSpec(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                     intermediate_size=256, vocab_size=128, num_hidden_layers=4)


# ---- exactness against NVIDIA's library -----------------------------------------------------------
def test_params_equal_nvidia_for_all_16_variants(nvlabs_library):
    sc = nvlabs_library.default_scenario
    blocks = nvlabs_library.blocks
    assert len(blocks) == 16
    for b in blocks:
        rec = nvlabs_library.costs[sc][b.key]
        ours = block_costs(LLAMA70, b, H100_SC, "h100-sxm")
        for k in ("num_params", "attention_num_params", "ffn_num_params"):
            assert ours[k] == rec[k], (b.key, k)
        # and the same numbers as puzzlekit.accounting (one source of truth)
        assert ours["num_params"] == pk.block_params(LLAMA70, b)


def test_memory_reproduces_nvidia_exactly(nvlabs_library):
    sc = nvlabs_library.default_scenario
    for b in nvlabs_library.blocks:
        rec = nvlabs_library.costs[sc][b.key]
        ours = block_costs(LLAMA70, b, H100_SC, "h100-sxm", memory=NVLABS_MEMORY)
        for k in ("memory_mib", "attention_memory_mib", "ffn_memory_mib"):
            assert ours[k] == pytest.approx(rec[k], abs=1e-9), (b.key, k)


def test_kv_bytes_per_token_match_nvidia(nvlabs_library):
    # their attention memory minus weights, per cached token of the KV cache, is 2·n_kv·d bytes at fp8
    sc = nvlabs_library.default_scenario
    b = next(b for b in nvlabs_library.blocks if b.attention.kind == "gqa" and b.ffn.no_op)
    rec = nvlabs_library.costs[sc][b.key]
    ours = block_costs(LLAMA70, b, H100_SC, "h100-sxm", memory=NVLABS_MEMORY)
    assert ours["kv_bytes_per_token"] == 2 * 8 * 128 * 1 == pk.block_kv_bytes_per_token(LLAMA70, b.attention, "fp8")
    seq, batch = 1200, 256 + NVLABS_MEMORY.prefill_queue
    query = seq * 8192 * 1
    kv_from_theirs = rec["attention_memory_mib"] * 2**20 - rec["attention_num_params"] * 1 - query
    assert kv_from_theirs / (seq * batch) == ours["kv_bytes_per_token"]


def test_calibration_against_nvidia_h100_fp8(nvlabs_library):
    res = calibrate_nvlabs(nvlabs_library, parent=LLAMA70)
    print(f"NVIDIA H100 FP8: MAPE {100 * res.mape_before:.2f} % uncalibrated -> {100 * res.mape_after:.2f} % "
          f"calibrated ({res.fitted}), max {100 * res.max_abs_pct_error:.1f} %")
    assert len(res.fitted) <= 3
    assert res.mape_after <= 0.10
    assert res.mape_after < res.mape_before
    assert len(res.labels) == 16


def test_calibration_refuses_a_wrong_parent(nvlabs_library):
    wrong = pk.ParentSpec(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                          intermediate_size=14336, vocab_size=128256, num_hidden_layers=32)
    with pytest.raises(ConfigError, match="parent"):
        calibrate_nvlabs(nvlabs_library, parent=wrong)


# ---- memory model: the published Llama-Nemotron targets -------------------------------------------
def test_super49b_fits_one_h100_with_300k_tokens_and_llama70b_does_not():
    h100 = get_hardware("h100-sxm")
    sup = pk.Architecture.from_config(SUPER_49B)
    par = pk.Architecture.homogeneous(sup.parent)
    sc = pk.Scenario("h100-sxm", "fp8", batch=1, prefill=1, decode=0)
    c_sup = architecture_cost(sup, sc, h100, kv_tokens=300_000)
    c_par = architecture_cost(par, sc, h100, kv_tokens=300_000)
    assert c_sup.fits(h100) and not c_par.fits(h100)
    assert c_sup.kv_cache_bytes == 300_000 * pk.kv_bytes_per_token(sup, "fp8")
    assert c_sup.weight_bytes == pk.weight_bytes(sup, "fp8")
    # and the 70B parent does not fit even without any cache at bf16
    assert architecture_cost(par, pk.Scenario("h100-sxm", "bf16", 1, 1, 0), h100, kv_tokens=0).memory_bytes \
        > h100.memory_bytes


# ---- analytic model properties --------------------------------------------------------------------
def test_decode_attention_grows_with_context():
    w = attention_work(LLAMA70, pk.AttentionConfig.gqa(8), H100_SC)
    f1, b1 = w.decode_step(1)
    f2, b2 = w.decode_step(200)
    assert f2 > f1 and b2 > b1
    # one step reads the whole cache: b·(P+s)·kv bytes
    core = next(k for k in w.decode if k.name == "attention")
    assert core.bytes[199] >= 256 * 1200 * 2048
    fw = ffn_work(LLAMA70, pk.FFNConfig.swiglu(28672), H100_SC)
    assert fw.decode_step(1) == fw.decode_step(200)  # FFNs do not depend on the context


def test_flops_formulas():
    sc = pk.Scenario("h100-sxm", "bf16", batch=2, prefill=10, decode=3)
    fw = ffn_work(TINY, pk.FFNConfig.swiglu(256), sc)
    mm = 2 * 20 * 64 * 256 * 3  # gate, up, down over 20 prompt tokens
    assert fw.prefill_flops == pytest.approx(mm + 4 * 20 * 64 + 4 * 20 * 256)
    aw = attention_work(TINY, pk.AttentionConfig.gqa(2), sc)
    core = next(k for k in aw.prefill if k.name == "attention")
    assert core.flops.sum() == pytest.approx(4 * 4 * 16 * 2 * 10 * 11 / 2)
    assert attention_work(TINY, pk.AttentionConfig.make_no_op(), sc).prefill_flops == 0
    # eager DynamicCache: each decode step's torch.cat reads the old cache and writes the new one
    cat = attention_work(TINY, pk.AttentionConfig.gqa(2), sc, concat_cache=True)
    kv_tok = 2 * 2 * 16 * 2  # K and V, 2 KV heads, head_dim 16, bf16
    extra = sum(2 * 2 * (10 + s) * kv_tok for s in (1, 2, 3))
    assert cat.decode_bytes - aw.decode_bytes == pytest.approx(extra)


def test_fewer_kv_heads_and_smaller_ffn_are_cheaper():
    hw = get_hardware("h100-sxm")
    kvs = [block_costs(LLAMA70, pk.BlockConfig(pk.AttentionConfig.gqa(k), pk.FFNConfig.make_no_op()), H100_SC, hw)
           for k in (8, 4, 2, 1)]
    assert [c["runtime_ms"] for c in kvs] == sorted(c["runtime_ms"] for c in kvs)[::-1]
    assert [c["kv_bytes_per_token"] for c in kvs] == [2048, 1024, 512, 256]
    ffns = [block_costs(LLAMA70, pk.BlockConfig(pk.AttentionConfig.make_no_op(), pk.FFNConfig.swiglu(i)), H100_SC, hw)
            for i in (28672, 14336, 2816)]
    assert ffns[0]["runtime_ms"] > ffns[1]["runtime_ms"] > ffns[2]["runtime_ms"] > 0


def test_tensor_parallel_splits_work_and_adds_allreduce():
    hw = get_hardware("h100-sxm")
    b = LLAMA70.parent_block()
    c1 = block_costs(LLAMA70, b, H100_SC, hw)
    sc8 = pk.Scenario("h100-sxm", "fp8", batch=256, prefill=1000, decode=200, tp=8)
    c8 = block_costs(LLAMA70, b, sc8, hw)
    assert c8["runtime_ms"] < c1["runtime_ms"]
    assert c8["memory_mib"] < c1["memory_mib"] / 7
    lat = roofline_latency(ffn_work(LLAMA70, pk.FFNConfig.swiglu(28672), sc8), hw)
    assert lat.allreduce_ms > 0
    assert roofline_latency(ffn_work(LLAMA70, pk.FFNConfig.swiglu(28672), H100_SC), hw).allreduce_ms == 0
    with pytest.raises(ConfigError, match="link_bandwidth"):
        roofline_latency(ffn_work(TINY, pk.FFNConfig.swiglu(256), pk.Scenario("x", tp=2)),
                         Hardware("x", {"bf16": 1e12}, 1e11, 1e9))


def test_fused_ffn_is_cheaper_than_its_parts_and_saves_allreduces():
    """A run of k FFNs fused into one wide FFN: same FLOPs, fewer kernels, one all-reduce instead of k."""
    hw = get_hardware("h100-sxm")
    sizes = [7168, 5632, 2816, 14336]
    noattn = pk.AttentionConfig.make_no_op()
    for tp in (1, 8):
        sc = pk.Scenario("h100-sxm", "fp8", batch=64, prefill=512, decode=128, tp=tp)
        parts = [pk.BlockConfig(noattn, pk.FFNConfig.swiglu(i)) for i in sizes]
        fused = [pk.BlockConfig(noattn, pk.FFNConfig.swiglu(sum(sizes)))]
        a = architecture_cost(parts, sc, hw, parent=LLAMA70)
        f = architecture_cost(fused, sc, hw, parent=LLAMA70)
        assert f.sequential_subblocks == 1 and a.sequential_subblocks == 4
        assert f.allreduces_per_pass == (1 if tp > 1 else 0) and a.allreduces_per_pass == (4 if tp > 1 else 0)
        assert f.blocks_runtime_ms < a.blocks_runtime_ms
        assert f.num_params < a.num_params  # three RMSNorm weights fewer (folded into the wide FFN)
    # the gain grows with TP: the all-reduces dominate small FFNs
    g1 = (architecture_cost(parts, pk.Scenario("h100-sxm", "fp8", 64, 512, 128, 1), hw, parent=LLAMA70).runtime_ms
          - architecture_cost(fused, pk.Scenario("h100-sxm", "fp8", 64, 512, 128, 1), hw, parent=LLAMA70).runtime_ms)
    g8 = (architecture_cost(parts, pk.Scenario("h100-sxm", "fp8", 64, 512, 128, 8), hw, parent=LLAMA70).runtime_ms
          - architecture_cost(fused, pk.Scenario("h100-sxm", "fp8", 64, 512, 128, 8), hw, parent=LLAMA70).runtime_ms)
    assert g8 > 0 and g1 > 0


def test_memory_kv_split_and_replication_under_tp():
    sc = pk.Scenario("h100-sxm", "bf16", batch=4, prefill=100, decode=0, tp=8)
    m8 = subblock_memory_bytes(LLAMA70, pk.AttentionConfig.gqa(8), sc)
    m1 = subblock_memory_bytes(LLAMA70, pk.AttentionConfig.gqa(1), sc)
    assert m8["kv_cache"] == 4 * 100 * 2 * 8 * 128 * 2 / 8  # one KV head per GPU
    assert m1["kv_cache"] == 4 * 100 * 2 * 1 * 128 * 2      # the single KV head is replicated


def test_hardware_catalogue_and_profiles(tmp_path):
    assert {"h100-sxm", "h100-pcie", "h200", "a100-sxm-80gb", "l40s", "b200"} <= set(CATALOGUE)
    h = get_hardware("h100-sxm")
    assert h.flops("fp8") == 1979e12 and h.flops("bf16") == 989e12 and h.memory_bandwidth == 3.35e12
    assert get_hardware("a100").flops("fp8") == 312e12  # no fp8 tensor cores: runs at bf16
    assert get_hardware("b200").flops("fp8") == 4500e12 and get_hardware("h200").memory_bandwidth == 4.8e12
    with pytest.raises(ConfigError, match="h100-sxm"):
        get_hardware("h100-sxn")
    p = save_hardware_profile(h.with_factors(compute_efficiency=0.42), tmp_path / "hw.json")
    assert load_hardware_profile(p).compute_efficiency == 0.42
    (tmp_path / "bad.json").write_text(json.dumps({"name": "x", "peak_flops": {}, "memory_bandwidth": 1,
                                                    "memory_bytes": 1}))
    with pytest.raises(ConfigError, match="peak_flops"):
        load_hardware_profile(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="unknown field"):
        Hardware.from_dict({"name": "x", "peak_flop": {}})


# ---- calibration machinery ------------------------------------------------------------------------
def test_nelder_mead_and_mape():
    x, v = nelder_mead(lambda z: float(((z - np.array([1.0, -2.0])) ** 2).sum()), np.zeros(2))
    assert v < 1e-8 and np.allclose(x, [1, -2], atol=1e-3)
    assert mape(np.array([1.1, 0.0]), np.array([1.0, 0.0])) == pytest.approx(0.05)


def test_fit_recovers_known_factors():
    """Measurements generated by known factors are explained exactly after fitting."""
    truth = get_hardware("h100-sxm").with_factors(compute_efficiency=0.37, attention_efficiency=0.3,
                                                  kernel_overhead=20e-6)
    from puzzlekit.profilers.calibrate import Measurement, predict

    sc = pk.Scenario("h100-sxm", "fp8", batch=32, prefill=256, decode=64)
    blocks = [pk.BlockConfig(pk.AttentionConfig.gqa(k), pk.FFNConfig.swiglu(i)) for k in (8, 2) for i in (28672, 4096)]
    ms = [pk.profilers.Measurement(LLAMA70, b, sc, 0.0, "block") for b in blocks]
    vals = predict(ms, truth)
    ms = [Measurement(LLAMA70, b, sc, float(v), "block") for b, v in zip(blocks, vals)]
    res = fit_factors(ms, "h100-sxm")
    assert res.mape_after < 1e-3 < res.mape_before
    with pytest.raises(ConfigError, match="cannot fit"):
        fit_factors(ms, "h100-sxm", ("peak_flops",))


# ---- library costs and CLI ------------------------------------------------------------------------
def test_profile_library_writes_costs_for_the_search(tmp_path):
    lib = profile_library(TINY, pk.Scenario("h100-sxm", "fp8", batch=8, prefill=64, decode=16))
    assert lib.blocks == pk.profilers.default_space(TINY) and len(lib) == 4 * len(lib.blocks)
    names = lib.cost_names
    for n in ("runtime_ms", "memory_mib", "num_params", "prefill_ms", "decode_ms", "kv_bytes_per_token"):
        assert n in names
    lib.validate()
    m = lib.cost_matrix(["runtime_ms", "memory_mib"])
    assert m.shape == (len(lib), 2) and (m >= 0).all()
    assert "non_block_costs" in lib.meta
    out = lib.save(tmp_path / "lib.json")
    again = pk.BlockLibrary.load(out)
    assert again.costs == lib.costs
    # costs added to an existing library, under a second scenario, leave the first alone
    profile_library(again, pk.Scenario("b200", "fp8", batch=8, prefill=64, decode=16))
    assert len(again.scenarios) == 2 and again.default_scenario == lib.default_scenario


def test_profile_nvidia_library_adds_a_second_scenario(nvlabs_library):
    import copy

    lib = copy.deepcopy(nvlabs_library)
    profile_library(lib, pk.Scenario("h200", "fp8", batch=256, prefill=1000, decode=200), parent=LLAMA70)
    sc = lib.resolve_scenario("h200/fp8/b256/p1000/d200/tp1")
    h100 = lib.cost_matrix(["runtime_ms"], lib.default_scenario)[:, 0]
    h200 = lib.cost_matrix(["runtime_ms"], sc)[:, 0]
    assert (h200 <= h100 + 1e-9).sum() >= len(lib) * 0.9  # more bandwidth, same compute: not slower


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "puzzlekit", *args], capture_output=True, text=True, timeout=120)


def test_cli_profile_and_errors(tmp_path):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"attention": ["gqa:8", "gqa:2", "no_op"], "ffn": ["100%", "ffn:7168", "no_op"]}))
    out = tmp_path / "lib.json"
    r = _cli("profile", "super-49b", "--hardware", "h100-sxm", "--dtype", "fp8", "--batch", "256", "--prefill",
             "1000", "--decode", "200", "--space", str(space), "-o", str(out))
    assert r.returncode == 0, r.stderr
    lib = pk.BlockLibrary.load(out)
    assert len(lib.blocks) == 9 and lib.num_layers == 80
    r = _cli("profile", "super-49b", "--hardware", "h100-sxn", "-o", str(out))
    assert r.returncode == 2 and "h100-sxm" in r.stderr
    r = _cli("profile", "super-49b", "--hardware", "h100-sxm", "--tp", "3", "-o", str(out))
    assert r.returncode == 2 and "--tp" in r.stderr


def test_cli_calibrate_nvidia(nvlabs_lib_path, tmp_path):
    prof = tmp_path / "h100.json"
    r = _cli("profile", "calibrate", str(nvlabs_lib_path), "--json", "-o", str(prof))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["mape_after"] <= 0.10 and len(d["fitted"]) == 3
    hw = load_hardware_profile(prof)
    assert hw.compute_efficiency == pytest.approx(d["fitted"]["compute_efficiency"])
    r = _cli("profile", "super-49b", "--hardware", str(prof), "--dtype", "fp8", "-o", str(tmp_path / "l.json"))
    assert r.returncode == 0, r.stderr


def test_import_profilers_does_not_import_torch():
    code = "import sys, puzzlekit.profilers, puzzlekit.profilers.calibrate; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr


@pytest.mark.parametrize("inter,hidden", [(448, 128), (768, 256), (28672, 8192)])
def test_default_space_keeps_the_parent_width(inter, hidden):
    """The parent's own block is in the default space and no FFN is wider than the parent's (a 448-wide
    parent once got 512 and lost its own block); widths are multiples of 256 at scale, of 8 below."""
    spec = pk.ParentSpec(hidden_size=hidden, num_attention_heads=8, num_key_value_heads=2, head_dim=hidden // 8,
                         intermediate_size=inter, vocab_size=128, num_hidden_layers=2)
    space = pk.profilers.default_space(spec)
    assert spec.parent_block() in space
    widths = {b.ffn.intermediate_size for b in space if b.ffn.kind == "swiglu"}
    assert max(widths) == inter and len(widths) >= 5
    assert all(w % (256 if inter >= 4096 else 8) == 0 for w in widths if w != inter)
