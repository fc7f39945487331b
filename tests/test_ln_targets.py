"""LN-Super / LN-Ultra target reports (puzzlekit.search.ln_targets)."""

from __future__ import annotations

from pathlib import Path

import pytest

import puzzlekit as pk
from puzzlekit.errors import ConfigError
from puzzlekit.search.ln_targets import (
    LLAMA_31_405B,
    library_score,
    ln_super_report,
    ln_ultra_report,
    parent_spec,
    plot_super_front,
    super_markdown,
    ultra_markdown,
    unfused_blocks,
)

NVLABS = [p for p in (Path(__file__).resolve().parents[1].parent / "shared/data/puzzle-llama-3.3-70b-block-library",
                      Path(__file__).resolve().parents[1].parent.parent / "shared/data/puzzle-llama-3.3-70b-block-library")
          if (p / "block_library.json").exists()]


def test_unfused_blocks_restores_count_and_width():
    from puzzlekit.cli.common import builtin_config_path

    ultra = pk.Architecture.from_config(builtin_config_path("ultra-253b"))
    spec = parent_spec(LLAMA_31_405B)
    un = unfused_blocks(ultra, min_width=spec.intermediate_size + 1)
    fused = [b for b in ultra.blocks if b.ffn.intermediate_size and b.ffn.intermediate_size > spec.intermediate_size]
    assert len(fused) == 4 and len(un) == len(ultra.blocks) - 4 + 49
    width = sum(b.ffn.intermediate_size or 0 for b in ultra.blocks)
    assert sum(b.ffn.intermediate_size or 0 for b in un) == width  # same total width: same weights and FLOPs
    assert pk.count(ultra.with_blocks(ultra.blocks)).num_params == pk.model_params(ultra)
    with pytest.raises(ConfigError, match="no fused"):
        unfused_blocks(pk.Architecture.homogeneous(spec), min_width=spec.intermediate_size + 1)


def test_ln_ultra_report(tmp_path):
    u = ln_ultra_report()
    la = u["latency"]
    assert not la["parent"]["fits"] and la["ultra"]["fits"]  # 3M cached tokens on 8 x 80 GB
    assert la["ultra"]["latency_ms"] < la["ultra_unfused"]["latency_ms"] < la["parent"]["latency_ms"]
    assert la["ultra"]["sequential_subblocks"] < la["ultra_unfused"]["sequential_subblocks"]
    assert 1.4 < la["puzzle_speedup"] < 1.7 and la["fusion_gain"] > 1.0
    assert u["overheads"]["29.3"]["fusion_gain"] > u["overheads"]["0"]["fusion_gain"]  # fusion saves kernels
    assert u["throughput_at_fit"]["speedup"] > 1
    md = ultra_markdown(u)
    assert "Llama-3.1-405B" in md and "does not fit" in md


@pytest.mark.slow
@pytest.mark.skipif(not NVLABS, reason="NVIDIA's Llama-3.3-70B block library is not here")
def test_ln_super_report_on_nvidia_library(tmp_path):
    lib = pk.import_nvlabs(NVLABS[0])
    r = ln_super_report(lib, hardware="h100-sxm", speedups=(2.0, 3.0), front_levels=(2.0, 3.0), front_batches=(256,))
    assert r["parent"]["batch"] == 48 and round(r["parent"]["tokens_per_s"]) == 4108  # issue 20's figures
    sup = r["super49b"]
    assert sup["batch"] == 256 and round(sup["tokens_per_s"]) == 9382 and sup["attention_layers"] == 49
    assert sup["objective"] == pytest.approx(7.959848, abs=1e-5)
    e = r["super_vs_front"]["equal_library_memory_runtime"]
    assert e["objective"] == pytest.approx(7.8674, abs=1e-4)
    assert r["super_vs_front"]["equal_throughput_at_fit"]["objective"] <= sup["objective"]
    assert r["largest_n"]["at_super_quality"]["speedup"] >= sup["speedup"]
    assert [c["speedup"] >= c["target"] for c in r["children"]] == [True, True]
    assert r["why_not_5x"]["reserve_for_5x"]["speedup"] >= 5
    plot_super_front(r, tmp_path / "front.png")
    assert (tmp_path / "front.png").stat().st_size > 10_000
    assert "Super-49B as published" in super_markdown(r)
    assert library_score(lib, pk.Architecture.homogeneous(lib.parent).blocks) == 0.0


@pytest.mark.slow
@pytest.mark.skipif(not NVLABS, reason="NVIDIA's Llama-3.3-70B block library is not here")
def test_throughput_target_script(tmp_path, capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples/ln_super/throughput_target.py"
    spec = importlib.util.spec_from_file_location("throughput_target", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--library", str(NVLABS[0]), "--hardware", "h100-sxm", "--no-front", "--out", str(tmp_path)])
    assert (tmp_path / "report.json").exists() and (tmp_path / "report.md").exists()
    assert out["ln_super"]["super49b"]["batch"] == 256
    assert "## LN-Ultra" in capsys.readouterr().out
