"""Produce a calibrated hardware profile on this machine, and report the profilers' fidelity.

Run it on your own box (CPU here; a CUDA GPU when there is one)::

    python benchmarks/profile_hardware.py                       # tiny model, local CPU, 1 thread
    python benchmarks/profile_hardware.py --device cuda --parent super-49b --layers-scale 0.25 \\
        --batch 16 --prefill 512 --decode 32 --dtype bf16 -o runs/h100

It (1) measures the hardware's peaks (CPU: matmul + copy micro-benchmark; GPU:
the catalogue entry of the detected GPU), (2) times every sub-block of a search
space with the repeated-block method, (3) fits the roofline's factors (at most
three) to those times and writes ``hardware.json`` + ``measurements.json``,
(4) prints the per-sub-block error, and (5) the additivity check: the sum of the
measured blocks plus the non-block part against the whole model measured in the
same run, for several heterogeneous architectures.  Every figure is a ratio of
times measured in this run, never an absolute time alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parent", help="parent config (default: a tiny Llama built in code)")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--decode", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--fit", default="compute_efficiency,memory_efficiency,kernel_overhead")
    ap.add_argument("-o", "--output", default="runs/profile_hardware")
    args = ap.parse_args(argv)

    import torch
    from puzzlekit.profilers import architecture_cost, get_hardware, measure_local_cpu, save_hardware_profile
    from puzzlekit.profilers.calibrate import fit_factors
    from puzzlekit.profilers.measured import (
        MeasuredProfiler,
        load_measurements,
        measure_model,
        measure_non_block,
    )

    import puzzlekit as pk
    from puzzlekit.cli.common import resolve_config
    from puzzlekit.formats.nvlabs import GPU_NAMES

    torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.parent:
        spec = pk.ParentSpec.from_hf_config(resolve_config(args.parent))
    else:
        spec = pk.ParentSpec(hidden_size=256, num_attention_heads=8, num_key_value_heads=4, head_dim=32,
                             intermediate_size=1024, vocab_size=2048, num_hidden_layers=6)
    if args.device == "cpu":
        hw = measure_local_cpu(threads=args.threads, refresh=True)
        hw_name = "local-cpu"
    else:
        name = torch.cuda.get_device_name()
        hw_name = GPU_NAMES.get(name) or "h100-sxm"
        hw = get_hardware(hw_name).with_factors(eager=True)
        print(f"GPU {name!r} -> catalogue entry {hw_name}")
    sc = pk.Scenario(hw_name, args.dtype, batch=args.batch, prefill=args.prefill, decode=args.decode)
    print(f"hardware {hw.name}: peak {', '.join(f'{k} {v / 1e9:.1f} GFLOP/s' for k, v in hw.peak_flops.items())}; "
          f"bandwidth {hw.memory_bandwidth / 1e9:.1f} GB/s; scenario {sc.name}")

    kv = spec.num_key_value_heads
    atts = [pk.AttentionConfig.gqa(k) for k in sorted({kv, max(1, kv // 2), 1}, reverse=True)]
    atts.append(pk.AttentionConfig.make_linear())
    inter = spec.intermediate_size
    ffns = [pk.FFNConfig.swiglu(max(256, int(f * inter) // 256 * 256)) for f in (1.0, 0.5, 0.25)]
    ffns.append(pk.FFNConfig.make_linear())
    blocks = [pk.BlockConfig(a, f) for a in atts for f in ffns]
    prof = MeasuredProfiler(spec, sc, device=args.device, threads=args.threads, repeats=args.repeats)
    rows = prof.measure(blocks)
    mpath = prof.save(out / "measurements.json", rows, hw_name)
    ms, _ = load_measurements(mpath)
    fit = tuple(x for x in args.fit.split(",") if x)
    res = fit_factors(ms, hw, fit)
    save_hardware_profile(res.hardware, out / "hardware.json")
    print(f"\nper sub-block (fitted {', '.join(f'{k}={v:.3g}' for k, v in res.fitted.items())}):")
    for r in res.table():
        print(f"  {r['label']:<22} measured/predicted {r['measured_ms'] / r['predicted_ms']:6.3f}  "
              f"({r['error_pct']:+6.1f} %)")
    print(f"per-sub-block MAPE: {100 * res.mape_before:.1f} % uncalibrated -> {100 * res.mape_after:.1f} % calibrated "
          f"(max {100 * res.max_abs_pct_error:.1f} %)")

    # additivity: heterogeneous architectures, measured whole vs (measured blocks + measured non-block)
    rng = np.random.default_rng(0)
    nb = measure_non_block(spec, sc, device=args.device, threads=args.threads, repeats=args.repeats)
    print(f"\nadditivity (non-block part measured: {nb.runtime_ms:.2f} ms):")
    sub_ms = {}
    for key, parts in rows.items():
        b = pk.BlockConfig.from_key(key)
        sub_ms[b.attention] = parts["attention"].runtime_ms
        sub_ms[b.ffn] = parts["ffn"].runtime_ms
    errs, errs_model = [], []
    for trial in range(4):
        layers = [pk.BlockConfig(atts[rng.integers(len(atts))] if rng.random() > 0.2 else pk.AttentionConfig.make_no_op(),
                                 ffns[rng.integers(len(ffns))]) for _ in range(spec.num_hidden_layers)]
        arch = pk.Architecture(spec, tuple(layers))
        whole = measure_model(arch, sc, device=args.device, threads=args.threads, repeats=args.repeats).runtime_ms
        summed = nb.runtime_ms + sum(sub_ms.get(b.attention, 0.0) + sub_ms.get(b.ffn, 0.0) for b in layers)
        model = architecture_cost(arch, sc, res.hardware).runtime_ms
        errs.append(summed / whole - 1)
        errs_model.append(model / whole - 1)
        print(f"  arch {trial}: sum-of-measured-blocks / whole = {summed / whole:.3f};"
              f"  calibrated roofline / whole = {model / whole:.3f}")
    print(f"additivity: mean |error| {100 * np.mean(np.abs(errs)):.1f} % (bias {100 * np.mean(errs):+.1f} %); "
          f"roofline whole-model mean |error| {100 * np.mean(np.abs(errs_model)):.1f} %")
    summary = {"hardware": res.hardware.to_dict(), "per_subblock_mape": res.mape_after,
               "per_subblock_mape_uncalibrated": res.mape_before, "additivity_errors": errs,
               "roofline_whole_model_errors": errs_model}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\nwrote {out / 'hardware.json'} (use: puzzlekit profile PARENT --hardware {out / 'hardware.json'} ...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
