"""Throughput at the batch that fits: exact answers checked against brute force over batch × architecture."""

from __future__ import annotations

import functools
import itertools
import json
import math

import numpy as np
import pytest
from puzzlekit.profilers import architecture_cost, get_hardware, non_block_costs

import puzzlekit as pk
from puzzlekit.accounting import block_kv_bytes_per_token, block_params, non_block_params
from puzzlekit.blocks import AttentionConfig, BlockConfig, FFNConfig
from puzzlekit.errors import ConfigError, InfeasibleError
from puzzlekit.search import (
    AtFit,
    Deployment,
    MemoryLimit,
    max_throughput_at_fit,
    parse_fit_spec,
    search_at_fit,
)

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128)
HW = get_hardware("h100-sxm")


def tiny_spec(layers: int = 3) -> pk.ParentSpec:
    return pk.ParentSpec(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         intermediate_size=128, vocab_size=100, num_hidden_layers=layers)


BLOCKS = [BlockConfig(AttentionConfig.gqa(2), FFNConfig.swiglu(128)), BlockConfig(AttentionConfig.gqa(1), FFNConfig.swiglu(64)),
          BlockConfig(AttentionConfig.make_no_op(), FFNConfig.swiglu(128)),
          BlockConfig(AttentionConfig.gqa(2), FFNConfig.make_no_op()),
          BlockConfig(AttentionConfig.make_no_op(), FFNConfig.make_no_op())]


def tiny_library(seed: int, layers: int = 3, span: bool = False) -> pk.BlockLibrary:
    """Every block on every layer with a random score (0 for the parent's own block); a spanning candidate."""
    r = np.random.default_rng(seed)
    spec = tiny_spec(layers)
    lib = pk.BlockLibrary(layers, spec)
    for i in range(layers):
        for k, b in enumerate(BLOCKS):
            lib.add(i, b, {"kl_div": 0.0 if k == 0 else float(r.uniform(0.05, 1.0) * (1 + k))})
    if span:
        lib.add((0, 1), BlockConfig(AttentionConfig.gqa(1), FFNConfig.swiglu(192)), {"kl_div": float(r.uniform(0.1, 1))})
    return lib


def covers(lib: pk.BlockLibrary):
    """Every exact cover of the layers (lists of candidate indices)."""
    def rec(pos, chosen):
        if pos == lib.num_layers:
            yield list(chosen)
            return
        for j in lib.candidates_for_layer(pos):
            yield from rec(lib.candidates[j].last + 1, [*chosen, j])
    yield from rec(0, [])


@functools.cache
def _block_runtime(spec, block, batch, prefill, decode):
    return pk.block_costs(spec, block, pk.Scenario("h100-sxm", "fp8", batch, prefill, decode), HW)["runtime_ms"]


@functools.cache
def _non_block_runtime(spec, batch, prefill, decode):
    return non_block_costs(spec, pk.Scenario("h100-sxm", "fp8", batch, prefill, decode), HW)["runtime_ms"]


def brute_fit(lib, dep: Deployment, chosen) -> tuple[float, int | None]:
    """Throughput at the batch that fits, from the profilers' block costs and puzzlekit.accounting (not FitCosts):
    weights at 1 byte (fp8) plus the KV cache of max(batch x sequence, min_kv_tokens) tokens."""
    spec = lib.parent
    blocks = [lib.candidates[j].block for j in chosen]
    weights = non_block_params(spec) + sum(block_params(spec, b) for b in blocks)
    kvpt = sum(block_kv_bytes_per_token(spec, b.attention, "fp8") for b in blocks)
    best, best_b = 0.0, None
    for b in dep.batches:
        mem = weights + kvpt * max(b * dep.sequence_length, dep.min_kv_tokens)
        if mem <= dep.memory_gib * 2**30 * (1 + 1e-9):
            rt = _non_block_runtime(spec, b, dep.prefill, dep.decode) + sum(
                _block_runtime(spec, x, b, dep.prefill, dep.decode) for x in blocks)
            t = 1000.0 * b * dep.sequence_length / rt
            if t > best:
                best, best_b = t, b
    return best, best_b


def brute_table(lib, dep):
    rows = []
    for ch in covers(lib):
        t, b = brute_fit(lib, dep, ch)
        rows.append((sum(lib.candidates[j].metrics["kl_div"] for j in ch), t, b, ch))
    return rows


DEPS = [
    Deployment(memory_gib=0.01, batches=BATCHES, measured=False),
    Deployment(memory_gib=0.004, batches=BATCHES, prefill=300, decode=60, measured=False),
    Deployment(memory_gib=0.01, batches=BATCHES, min_kv_tokens=40_000, measured=False),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dep", DEPS, ids=["plain", "short", "min_kv"])
def test_search_at_fit_matches_brute_force(seed, dep):
    lib = tiny_library(seed, span=seed == 2)
    table = brute_table(lib, dep)
    ref_t, ref_b = brute_fit(lib, dep, [j for j in range(len(lib.candidates)) if lib.candidates[j].block == BLOCKS[0]])
    fit = AtFit(lib, "kl_div", dep)
    if dep.min_kv_tokens == 0:
        assert fit.reference().batch == ref_b and fit.reference().tokens_per_s == pytest.approx(ref_t, rel=1e-9)
    ref = fit.reference().tokens_per_s
    speeds = sorted({t / ref for _, t, _, _ in table if t > 0})
    for n in [speeds[0] * 0.5, *speeds[:: max(1, len(speeds) // 6)], speeds[-1]]:
        want = min((kl for kl, t, _, _ in table if t >= n * ref * (1 - 1e-12)), default=None)
        sol = fit.search(min_speedup=n)
        assert sol.status is pk.Status.OPTIMAL
        assert sol.objective == pytest.approx(want, abs=1e-9)
        t, b = brute_fit(lib, dep, sol.candidates)
        assert sol.tokens_per_s == pytest.approx(t, rel=1e-9) and sol.batch == b
        assert t >= n * ref * (1 - 1e-9)
        assert sol.speedup == pytest.approx(t / ref, rel=1e-12)
    with pytest.raises(InfeasibleError, match="fastest reaches"):
        fit.search(min_speedup=speeds[-1] * 1.01)


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("dep", DEPS[:2], ids=["plain", "short"])
def test_max_throughput_matches_brute_force(seed, dep):
    lib = tiny_library(seed, span=seed == 3)
    table = brute_table(lib, dep)
    kls = sorted({kl for kl, t, _, _ in table if t > 0})
    fit = AtFit(lib, "kl_div", dep)
    for q in [kls[0], *kls[1::max(1, len(kls) // 5)], kls[-1] + 1.0]:
        want = max(t for kl, t, _, _ in table if kl <= q + 1e-12)
        sol = fit.max_throughput(bound=q)
        assert sol.status is pk.Status.OPTIMAL
        assert sol.tokens_per_s == pytest.approx(want, rel=2e-8)
        assert sol.objective <= q + 1e-9
        assert brute_fit(lib, dep, sol.candidates)[0] == pytest.approx(sol.tokens_per_s, rel=1e-9)
    with pytest.raises(InfeasibleError, match="relax the bound"):
        fit.max_throughput(bound=-1.0)


def test_maximised_objective_and_library_measured_runtimes():
    """A maximised objective bounds from below; a library scenario's measured runtime_ms replaces the roofline."""
    lib = tiny_library(4)
    for c in lib.candidates:
        c.metrics["acc"] = 1.0 - c.metrics["kl_div"]
    dep = Deployment(memory_gib=0.01, batches=(8, 16, 32))
    sc = pk.Scenario("h100-sxm", "fp8", 16, 1000, 200)
    for b in BLOCKS:  # 'measured' at batch 16: five times the roofline's runtime
        lib.set_costs(sc, b, {"runtime_ms": 5 * pk.block_costs(lib.parent, b, sc, HW)["runtime_ms"]})
    fit = AtFit(lib, "acc", dep, maximize=True)
    assert fit.costs.sources[16] == {"measured"} if fit.costs.columns(fit.blocks, 16) else False
    assert not fit.costs.monotone(fit.blocks, dep.batches)
    best = {}
    for ch in covers(lib):
        ev = fit.costs.evaluate([lib.candidates[j].block for j in ch])
        acc = sum(lib.candidates[j].metrics["acc"] for j in ch)
        best[tuple(ch)] = (acc, ev.tokens_per_s)
        direct = {}
        for b in dep.batches:
            rt = sum((5 if b == 16 else 1) * _block_runtime(lib.parent, lib.candidates[j].block, b, 1000, 200)
                     for j in ch) + _non_block_runtime(lib.parent, b, 1000, 200)
            direct[b] = 1000 * b * 1200 / rt
        assert ev.at(16)["tokens_per_s"] == pytest.approx(direct[16], rel=1e-9)
    q = sorted(a for a, _ in best.values())[len(best) // 2]
    sol = fit.max_throughput(bound=q)
    assert sol.objective >= q - 1e-9
    assert sol.tokens_per_s == pytest.approx(max(t for a, t in best.values() if a >= q - 1e-12), rel=2e-8)
    tau = sol.tokens_per_s
    s2 = fit.search(min_tokens_per_s=tau)
    assert s2.objective == pytest.approx(max(a for a, t in best.values() if t >= tau * (1 - 1e-12)), abs=1e-9)


def test_nvidia_figures_from_the_issue(nvlabs_lib_or_skip):
    """Issue 20's roofline figures: parent 4,108 tokens/s at batch 48; Super-49B 9,382 at batch 256 (2.28x)."""
    fit = AtFit(nvlabs_lib_or_skip, "kl_div", Deployment(memory_gib=76, measured=False), parent="super-49b")
    ref = fit.reference()
    assert ref.batch == 48 and round(ref.tokens_per_s) == 4108
    sup = fit.evaluate(pk.Architecture.from_config(_super_config()))
    assert sup.batch == 256 and round(sup.tokens_per_s) == 9382
    sol = fit.search(min_speedup=3.0)
    assert sol.status is pk.Status.OPTIMAL and sol.speedup >= 3.0 and sol.batch == 384
    assert sol.objective == pytest.approx(12.893250383, abs=1e-6)
    assert sum(r["status"] == "solved" for r in sol.scan) <= 3  # the bounds skip the other batches


def _super_config():
    from puzzlekit.cli.common import builtin_config_path

    return builtin_config_path("super-49b")


@pytest.fixture
def nvlabs_lib_or_skip(nvlabs_library):  # conftest: $PUZZLEKIT_SHARED or ../shared, skipped when absent
    return nvlabs_library


def test_parse_fit_spec_and_errors():
    dep, t = parse_fit_spec("h100-sxm:fp8:1000+200>=3x")
    assert (dep.hardware, dep.dtype, dep.prefill, dep.decode, dep.tp, t) == ("h100-sxm", "fp8", 1000, 200, 1, {"min_speedup": 3.0})
    dep, t = parse_fit_spec("h200:bf16:tp8:1024+256>=2e4", batches=[4, 2, 2])
    assert dep.tp == 8 and t == {"min_tokens_per_s": 20000.0} and dep.batches == (2, 4)
    assert parse_fit_spec("b200:fp8:100+10")[1] == {}
    for bad in ("h100-sxm:fp8:1000", "h100-sxm:fp8:1000+200>=x", "h100-sxm:fp8:1000+200>=0", "h100-sxm:fp9:10+1",
                "h100-sxm:fp8:tp0:10+1>=2x", "h100-sxm:fp8:0+0>=2x"):
        with pytest.raises(ConfigError):
            parse_fit_spec(bad)
    for kw in ({"batches": []}, {"batches": [0, 1]}, {"memory_gib": -1}, {"memory_fraction": 1.5}, {"min_kv_tokens": -5}):
        with pytest.raises(ConfigError):
            Deployment(**kw)
    lib = tiny_library(0)
    with pytest.raises(ConfigError, match="exactly one"):
        search_at_fit(lib, "kl_div", memory_gib=0.01, batches=BATCHES)
    with pytest.raises(ConfigError, match="unknown keyword"):
        search_at_fit(lib, "kl_div", min_speedup=2, memory_gb=1)
    with pytest.raises(ConfigError, match="memory and runtime per batch"):
        search_at_fit(lib, "kl_div", min_speedup=2, constraints=[MemoryLimit(max_gib=1)])
    with pytest.raises(ConfigError, match="batch-independent"):
        search_at_fit(lib, "kl_div", min_speedup=2, budgets={"memory_mib": 5})
    with pytest.raises(ConfigError, match="fits no batch"):
        search_at_fit(lib, "kl_div", min_speedup=2, memory_gib=1e-5, batches=BATCHES)
    nolib = pk.BlockLibrary(3)
    for i in range(3):
        nolib.add(i, BLOCKS[0], {"kl_div": 0.0})
    with pytest.raises(ConfigError, match="parent="):
        search_at_fit(nolib, "kl_div", min_speedup=1)
    assert max_throughput_at_fit(lib, "kl_div", bound=0.0, memory_gib=0.01, batches=BATCHES).objective == 0.0


def test_cli_throughput_at_fit(tmp_path, capsys):
    from puzzlekit.cli import main

    lib = tiny_library(1)
    path = tmp_path / "lib.json"
    lib.save(path)
    args = ["search", str(path), "--objective", "kl_div", "--memory-gib", "0.01", "--batches", ",".join(map(str, BATCHES))]
    assert main([*args, "--throughput-at-fit", "h100-sxm:fp8:1000+200>=1.5x"]) == 0
    out = capsys.readouterr().out
    assert "tokens/s" in out and "x the parent's" in out and "skipped by their bound" in out
    assert main([*args, "--throughput-at-fit", "h100-sxm:fp8:1000+200>=1.5x", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    want = search_at_fit(lib, "kl_div", min_speedup=1.5, memory_gib=0.01, batches=BATCHES)
    assert d["objective"] == pytest.approx(want.objective) and d["batch"] == want.batch and d["speedup"] >= 1.5
    assert main([*args, "--throughput-at-fit", "h100-sxm:fp8:1000+200", "--objective-bound", "1.0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["objective"] <= 1.0
    for extra in (["--throughput-at-fit", "h100-sxm:fp8:1000+200"],  # neither target nor bound
                  ["--throughput-at-fit", "h100-sxm:fp8:1000+200>=2x", "--objective-bound", "1"],
                  ["--throughput-at-fit", "h100-sxm:fp8:1000+200>=2x", "--num-solutions", "2"],
                  ["--throughput-at-fit", "h100:fp8"],
                  ["--throughput-at-fit", "h100-sxm:fp8:1000+200>=1e9"]):  # infeasible
        assert main([*args, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("puzzlekit: error:") and err.count("\n") == 1
    assert main(["search", str(path), "--objective", "kl_div", "--min-kv-tokens", "5"]) == 2
    assert math.isfinite(want.tokens_per_s)


def test_throughput_at_fit_of_an_architecture():
    spec = tiny_spec()
    arch = pk.Architecture.homogeneous(spec)
    ev = pk.throughput_at_fit(arch, memory_gib=0.01, batches=BATCHES)
    assert ev.fits and ev.batch == ev.largest_batch  # the roofline's runtime per sequence falls with the batch
    sc = pk.Scenario("h100-sxm", "fp8", ev.batch, 1000, 200)
    c = architecture_cost(arch, sc, HW)
    assert ev.tokens_per_s == pytest.approx(c.tokens_per_s(sc), rel=1e-12)
    assert ev.memory_mib == pytest.approx(c.memory_bytes / 2**20, rel=1e-12)
    assert not ev.at(2 * ev.batch)["fits"]
    assert not pk.throughput_at_fit(arch, memory_gib=1e-6, batches=BATCHES).fits
    assert list(itertools.islice(covers(tiny_library(0)), 1))


def test_tensor_parallel_costs_match_the_profilers():
    """Per GPU under tensor parallelism: split weights and KV heads, all-reduces in the runtime."""
    spec = pk.ParentSpec(hidden_size=256, num_attention_heads=8, num_key_value_heads=4, head_dim=32,
                         intermediate_size=512, vocab_size=300, num_hidden_layers=4)
    arch = pk.Architecture(spec, (BlockConfig(AttentionConfig.gqa(4), FFNConfig.swiglu(512)),
                                           BlockConfig(AttentionConfig.gqa(1), FFNConfig.swiglu(256)),
                                           BlockConfig(AttentionConfig.make_no_op(), FFNConfig.swiglu(1024)),
                                           BlockConfig(AttentionConfig.gqa(2), FFNConfig.make_no_op())))
    ev = pk.throughput_at_fit(arch, memory_gib=0.02, batches=BATCHES, tp=2)
    for row in ev.rows:
        sc = pk.Scenario("h100-sxm", "fp8", row["batch"], 1000, 200, tp=2)
        c = architecture_cost(arch, sc, HW)
        assert row["runtime_ms"] == pytest.approx(c.runtime_ms, rel=1e-12)
        assert row["memory_mib"] == pytest.approx(c.memory_bytes / 2**20, rel=1e-12)
    assert ev.fits and ev.batch == ev.largest_batch < BATCHES[-1]
