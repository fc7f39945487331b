"""Measured profiler: real puzzlekit.model sub-blocks timed with torch (no wall-clock assertions)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from puzzlekit.profilers.calibrate import fit_factors  # noqa: E402
from puzzlekit.profilers.measured import (  # noqa: E402
    MeasuredProfiler,
    load_measurements,
    measure_model,
    time_subblock,
)

import puzzlekit as pk  # noqa: E402
from puzzlekit.errors import ConfigError  # noqa: E402

SPEC = pk.ParentSpec(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                     intermediate_size=256, vocab_size=128, num_hidden_layers=3)
SC = pk.Scenario("local-cpu", "fp32", batch=2, prefill=8, decode=3)
FAST = dict(threads=1, warmup=1, repeats=2, n_lo=1, n_hi=2)


def test_time_subblock_measures_memory_exactly():
    t = time_subblock(SPEC, pk.AttentionConfig.gqa(2), SC, **FAST)
    assert t.prefill_ms >= 0 and t.decode_ms >= 0
    # the KV cache after prefill + decode: batch × tokens × 2 (K, V) × n_kv × d × 4 bytes
    assert t.kv_cache_bytes == 2 * (8 + 3) * 2 * 2 * 16 * 4
    assert t.param_bytes == pk.accounting.attention_params(SPEC, pk.AttentionConfig.gqa(2)) * 4
    f = time_subblock(SPEC, pk.FFNConfig.swiglu(128), SC, **FAST)
    assert f.kv_cache_bytes == 0 and f.param_bytes == pk.accounting.ffn_params(SPEC, pk.FFNConfig.swiglu(128)) * 4
    assert time_subblock(SPEC, pk.FFNConfig.make_no_op(), SC, **FAST).runtime_ms == 0


def test_bad_requests_raise():
    with pytest.raises(ConfigError, match="fp8"):
        time_subblock(SPEC, pk.FFNConfig.swiglu(128), pk.Scenario("local-cpu", "fp8", 1, 4, 1), **FAST)
    with pytest.raises(ConfigError, match="tp=1"):
        time_subblock(SPEC, pk.FFNConfig.swiglu(128), pk.Scenario("local-cpu", "fp32", 1, 4, 1, tp=2), **FAST)
    with pytest.raises(ConfigError, match="n_lo"):
        time_subblock(SPEC, pk.FFNConfig.swiglu(128), SC, threads=1, n_lo=2, n_hi=2)


def test_measurements_roundtrip_and_calibrate(tmp_path):
    from puzzlekit.profilers.hardware import Hardware

    blocks = [pk.BlockConfig(pk.AttentionConfig.gqa(2), pk.FFNConfig.swiglu(256)),
              pk.BlockConfig(pk.AttentionConfig.make_linear(), pk.FFNConfig.make_no_op())]
    prof = MeasuredProfiler(SPEC, SC, **FAST)
    rows = prof.measure(blocks)
    assert set(rows) == {b.key for b in blocks}
    costs = prof.costs(rows)
    assert costs[blocks[1].key]["ffn_runtime_ms"] == 0
    path = prof.save(tmp_path / "m.json", rows)
    ms, hw_name = load_measurements(path)
    assert hw_name == "local-cpu" and len(ms) == 3  # gqa:2, ffn:256, linear attention (no-op skipped)
    cpu = Hardware("local-cpu", {"fp32": 5e10}, 2e10, 1e10, compute_efficiency=1.0, memory_efficiency=1.0,
                   attention_efficiency=1.0, kernel_overhead=1e-5, max_batched_tokens=1 << 30, eager=True)
    res = fit_factors(ms, cpu, ("compute_efficiency", "kernel_overhead"))
    assert res.mape_after <= res.mape_before + 1e-12
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigError, match="measurements"):
        load_measurements(tmp_path / "bad.json")


def test_measure_model_runs_prefill_and_decode():
    arch = pk.Architecture(SPEC, (SPEC.parent_block(), pk.BlockConfig(pk.AttentionConfig.make_no_op(),
                                                                        pk.FFNConfig.swiglu(64))))
    t = measure_model(arch, SC, threads=1, warmup=0, repeats=1)
    assert t.prefill_ms > 0 and t.decode_ms > 0 and t.param_bytes > 0


@pytest.mark.slow
def test_cpu_fidelity_per_subblock_and_additivity(tmp_path):
    """Prints the calibrated per-sub-block error and the additivity error on this CPU (noisy when shared)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "profile_hardware.py"), "-o", str(tmp_path)],
                       capture_output=True, text=True, timeout=1800)
    print(r.stdout)
    assert r.returncode == 0, r.stderr
    import json

    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["per_subblock_mape"] <= s["per_subblock_mape_uncalibrated"] + 1e-12


def test_cache_spill_fit_and_linearisation():
    from puzzlekit.profilers.measured import CacheSpill

    s = CacheSpill.fit_capacity(2.0, 10.0, 6.0)  # 6 ms excess at 2 ms/byte beyond capacity: 3 bytes over
    assert s.capacity_bytes == 7.0 and s.extra_ms(10.0) == 6.0 and s.extra_ms(5.0) == 0.0
    assert CacheSpill.fit_capacity(2.0, 10.0, -1.0).extra_ms(10.0) == 0.0  # parent additive: no spill at its size
    assert CacheSpill.fit_capacity(2.0, 10.0, 100.0).capacity_bytes == 0.0  # clamped
    assert CacheSpill.from_dict(s.to_dict()) == s
    # max(0, W - C) is convex: sum + extra <= T  <=>  sum <= T and sum + gamma (W - C) <= T
    for tot, w, T in ((5.0, 9.0, 6.0), (5.0, 7.5, 6.0), (5.0, 12.0, 12.0), (7.0, 1.0, 6.0)):
        assert (tot + s.extra_ms(w) <= T) == (tot <= T and tot + 2.0 * (w - 7.0) <= T)


def test_cache_spill_two_point_fit_and_half_architecture():
    from puzzlekit.profilers.cost_model import _half_architecture
    from puzzlekit.profilers.measured import CacheSpill

    import puzzlekit as pk
    from puzzlekit.errors import ConfigError

    # excess 1 ms at 5 bytes and 6 ms at 10: slope 1 ms/byte, capacity 4 bytes (the small model spills 1)
    s = CacheSpill.fit_two_points(5.0, 1.0, 10.0, 6.0)
    assert s.gamma_ms_per_byte == 1.0 and s.capacity_bytes == 4.0
    assert s.extra_ms(5.0) == 1.0 and s.extra_ms(10.0) == 6.0 and s.extra_ms(3.0) == 0.0
    # proportional (SmolLM2's case): excess per byte the same at both sizes -> capacity 0
    p = CacheSpill.fit_two_points(5.0, 1.75, 10.0, 3.5)
    assert p.capacity_bytes == 0.0 and abs(p.extra_ms(8.0) - 2.8) < 1e-12
    # a small model measured under its sum (noise) counts as no spill there
    assert CacheSpill.fit_two_points(5.0, -2.0, 10.0, 5.0) == CacheSpill(1.0, 5.0)
    assert CacheSpill.fit_two_points(5.0, 3.0, 10.0, 2.0).extra_ms(1e9) == 0.0  # no slope: additive
    with pytest.raises(ConfigError, match="working sets must differ"):
        CacheSpill.fit_two_points(10.0, 1.0, 10.0, 2.0)
    spec = pk.ParentSpec(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         intermediate_size=128, vocab_size=128, num_hidden_layers=5)
    half = _half_architecture(pk.Architecture(spec, (spec.parent_block(),) * 5))
    kept = [not (b.attention.no_op or b.ffn.no_op) for b in half.blocks]
    assert kept == [True, False, True, False, True]
    assert all(b.attention.no_op and b.ffn.no_op for b, k in zip(half.blocks, kept) if not k)


def test_working_set_bytes_counts_weights_and_mean_context_kv():
    from puzzlekit.profilers.measured import (
        non_block_working_set_bytes,
        subblock_working_set_bytes,
        working_set_bytes,
    )

    a, f = pk.AttentionConfig.gqa(2), pk.FFNConfig.swiglu(128)
    ctx = SC.prefill + SC.decode / 2
    assert subblock_working_set_bytes(SPEC, a, SC) == (pk.accounting.attention_params(SPEC, a) * 4
                                                       + 2 * 2 * 16 * 4 * ctx * SC.batch)
    assert subblock_working_set_bytes(SPEC, f, SC) == pk.accounting.ffn_params(SPEC, f) * 4
    assert subblock_working_set_bytes(SPEC, pk.FFNConfig.make_no_op(), SC) == 0
    assert subblock_working_set_bytes(SPEC, pk.AttentionConfig.make_linear(), SC) == (64 * 64 + 64) * 4  # + its norm
    arch = pk.Architecture(SPEC, (pk.BlockConfig(a, f), pk.BlockConfig(pk.AttentionConfig.make_no_op(), f)))
    assert working_set_bytes(arch, SC) == (non_block_working_set_bytes(SPEC, SC)
                                           + subblock_working_set_bytes(SPEC, a, SC)
                                           + 2 * subblock_working_set_bytes(SPEC, f, SC))


def test_non_block_part_with_all_layers():
    from puzzlekit.profilers.measured import measure_non_block

    t = measure_non_block(SPEC, SC, layers=3, threads=1, warmup=0, repeats=1)
    assert t.prefill_ms > 0 and t.decode_ms > 0
    with pytest.raises(ConfigError, match="layers"):
        measure_non_block(SPEC, SC, layers=0)
