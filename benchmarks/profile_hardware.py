"""Produce a calibrated hardware profile on this machine, and report the profilers' fidelity.

Run it on your own box (CPU here; a CUDA GPU when there is one)::

    python benchmarks/profile_hardware.py                       # tiny model, local CPU, 1 thread
    python benchmarks/profile_hardware.py --device cuda --parent super-49b --layers 4 --archs 2 \\
        --batch 16 --prefill 512 --decode 32 --dtype bf16 -o runs/h100

It (1) measures the hardware's peaks (CPU: matmul + copy micro-benchmark; GPU:
the catalogue entry of the detected GPU), (2) times every sub-block of a search
space with the repeated-block method, (3) fits the roofline's factors (at most
three) to those times and writes ``hardware.json`` + ``measurements.json``,
(4) prints the per-sub-block error, and (5) the additivity check: the sum of the
measured blocks plus the non-block part (a model of L no-op layers) against the
whole model, for the parent and several heterogeneous architectures, with and
without the decode cache-spill correction (gamma measured on a stack too big for
the cache, capacity fitted on the parent: see ``puzzlekit.profilers.measured``).
Everything is measured in interleaved rounds (each sub-block, the non-block part
and each whole model once per round); ratios are taken per round and the median
over rounds is reported.  Every figure is a ratio of times measured in this run,
never an absolute time alone.
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
    ap.add_argument("--layers", type=int, help="use this many layers of the parent (a full-size parent's "
                                                 "whole-model checks need all of its weights in memory)")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--decode", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="repetitions per measurement (median)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds over everything (median)")
    ap.add_argument("--archs", type=int, default=5, help="random heterogeneous architectures besides the parent")
    ap.add_argument("--fit", default="compute_efficiency,attention_efficiency,kernel_overhead",
                    help="factors to fit (at most three; the default is also the NVIDIA H100 fit's: on this CPU it "
                         "beats fitting memory_efficiency, as eager SDPA costs about the same at any KV-head count)")
    ap.add_argument("-o", "--output", default="runs/profile_hardware")
    args = ap.parse_args(argv)

    import torch
    from puzzlekit.profilers import architecture_cost, get_hardware, measure_local_cpu, save_hardware_profile
    from puzzlekit.profilers.calibrate import fit_factors
    from puzzlekit.profilers.measured import (
        CacheSpill,
        MeasuredProfiler,
        Timing,
        load_measurements,
        measure_model,
        measure_non_block,
        measure_spill_gamma,
        time_subblock,
        working_set_bytes,
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
    if args.layers:
        import dataclasses

        spec = dataclasses.replace(spec, num_hidden_layers=args.layers)
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
    subs = [*atts, *ffns]
    L = spec.num_hidden_layers
    # heterogeneous architectures for the additivity check; the first is the parent (the cache-spill
    # capacity is fitted on it, so the others are out-of-sample)
    rng = np.random.default_rng(0)
    archs = [pk.Architecture(spec, (spec.parent_block(),) * L)]
    for _ in range(args.archs):
        layers = [pk.BlockConfig(atts[rng.integers(len(atts))] if rng.random() > 0.2 else pk.AttentionConfig.make_no_op(),
                                 ffns[rng.integers(len(ffns))] if rng.random() > 0.15 else pk.FFNConfig.make_no_op())
                  for _ in range(L)]
        archs.append(pk.Architecture(spec, tuple(layers)))
    from puzzlekit.model import PuzzleForCausalLM

    models = []
    for a in archs:
        torch.manual_seed(0)
        models.append(PuzzleForCausalLM.from_architecture(a))

    # interleaved rounds: every sub-block, the non-block part and every whole model once per round, so
    # slow drifts of a shared machine hit all of them alike; per-round ratios, medians over rounds
    kw = dict(device=args.device, threads=args.threads)
    sub_runs = {s: [] for s in subs}
    nb_runs, whole_runs = [], [[] for _ in archs]
    for r in range(args.rounds):
        for s in subs:
            sub_runs[s].append(time_subblock(spec, s, sc, repeats=args.repeats, warmup=1, seed=r, **kw))
        nb_runs.append(measure_non_block(spec, sc, layers=L, repeats=args.repeats, warmup=1, seed=r, **kw))
        for i, m in enumerate(models):
            whole_runs[i].append(measure_model(m, sc, repeats=args.repeats, warmup=1, seed=r, **kw))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    gs = [measure_spill_gamma(spec, sc, at_bytes=working_set_bytes(archs[0], sc), repeats=args.repeats, seed=r, **kw)
          for r in range(3)]
    gamma = float(np.median([g for g, _ in gs]))
    gdet = {**gs[0][1], "gammas_ms_per_mib": [g * 2**20 for g, _ in gs]}

    def med(xs, f):
        return float(np.median([f(x) for x in xs]))

    rows = {}
    for b in [pk.BlockConfig(a, f) for a in atts for f in ffns]:
        rows[b.key] = {p: Timing(med(sub_runs[s], lambda t: t.prefill_ms), med(sub_runs[s], lambda t: t.decode_ms),
                                 sub_runs[s][0].param_bytes, sub_runs[s][0].kv_cache_bytes)
                       for p, s in (("attention", b.attention), ("ffn", b.ffn))}
    noise = {s.short(): float(np.median([abs(t.runtime_ms / med(sub_runs[s], lambda x: x.runtime_ms) - 1)
                                         for t in sub_runs[s]])) for s in subs}
    prof = MeasuredProfiler(spec, sc, **kw)
    mpath = prof.save(out / "measurements.json", rows, hw_name)
    ms, _ = load_measurements(mpath)
    fit = tuple(x for x in args.fit.split(",") if x)
    res = fit_factors(ms, hw, fit)
    save_hardware_profile(res.hardware, out / "hardware.json")
    print(f"\nper sub-block (median of {args.rounds} interleaved rounds; fitted "
          f"{', '.join(f'{k}={v:.3g}' for k, v in res.fitted.items())}):")
    for r_ in res.table():
        print(f"  {r_['label']:<22} measured/predicted {r_['measured_ms'] / r_['predicted_ms']:6.3f}  "
              f"({r_['error_pct']:+6.1f} %)")
    print(f"per-sub-block MAPE: {100 * res.mape_before:.1f} % uncalibrated -> {100 * res.mape_after:.1f} % calibrated "
          f"(max {100 * res.max_abs_pct_error:.1f} %); measurement noise (median |round/median - 1|): "
          f"{100 * float(np.median(list(noise.values()))):.1f} %")

    # additivity, per round: non-block (L no-op layers) + summed sub-blocks [+ cache spill] against the whole
    def summed(arch, r, phase):
        t = nb_runs[r]
        tot = getattr(t, phase)
        for b in arch.blocks:
            for x in (b.attention, b.ffn):
                if not x.no_op:
                    tot += getattr(sub_runs[x][r], phase)
        return tot

    excess = [whole_runs[0][r].decode_ms - summed(archs[0], r, "decode_ms") for r in range(args.rounds)]
    spill = CacheSpill.fit_capacity(gamma, working_set_bytes(archs[0], sc), float(np.median(excess)))
    print(f"\nadditivity (non-block part: {L} no-op layers, {med(nb_runs, lambda t: t.runtime_ms):.2f} ms; "
          f"cache spill: gamma {spill.to_dict()['gamma_ms_per_mib']:.3f} ms/MiB measured on "
          f"{gdet['sub']} stacks of {gdet['copies']} copies (~{gdet['at_mib']:.1f} MiB, the parent's size), capacity {spill.to_dict()['capacity_mib']:.1f} MiB fitted on "
          f"arch 0 = the parent):")
    errs, errs_plain, errs_model, detail = [], [], [], []
    for i, arch in enumerate(archs):
        ws = working_set_bytes(arch, sc)
        rp = [summed(arch, r, "prefill_ms") / whole_runs[i][r].prefill_ms for r in range(args.rounds)]
        rd = [summed(arch, r, "decode_ms") / whole_runs[i][r].decode_ms for r in range(args.rounds)]
        plain = [(summed(arch, r, "prefill_ms") + summed(arch, r, "decode_ms")) / whole_runs[i][r].runtime_ms
                 for r in range(args.rounds)]
        corr = [(summed(arch, r, "prefill_ms") + summed(arch, r, "decode_ms") + spill.extra_ms(ws))
                / whole_runs[i][r].runtime_ms for r in range(args.rounds)]
        whole = med(whole_runs[i], lambda t: t.runtime_ms)
        model = architecture_cost(arch, sc, res.hardware).runtime_ms
        e, ep = float(np.median(corr)) - 1, float(np.median(plain)) - 1
        errs.append(e)
        errs_plain.append(ep)
        errs_model.append(model / whole - 1)
        detail.append({"blocks": [b.key for b in arch.blocks], "working_set_mib": ws / 2**20,
                       "prefill_ratio": float(np.median(rp)), "decode_ratio": float(np.median(rd)),
                       "sum_over_whole": 1 + ep, "sum_plus_spill_over_whole": 1 + e})
        print(f"  arch {i}{' (parent)' if i == 0 else ''}: working set {ws / 2**20:5.1f} MiB; sum/whole prefill "
              f"{np.median(rp):.3f} decode {np.median(rd):.3f} total {1 + ep:.3f}; with spill {1 + e:.3f};"
              f"  calibrated roofline / whole {model / whole:.3f}")
    out_of_sample = errs[1:]
    print(f"additivity: mean |error| {100 * np.mean(np.abs(out_of_sample)):.1f} % (max {100 * np.max(np.abs(out_of_sample)):.1f} %,"
          f" bias {100 * np.mean(out_of_sample):+.1f} %) with the spill correction on the {len(out_of_sample)} non-parent "
          f"architectures; plain sum {100 * np.mean(np.abs(errs_plain[1:])):.1f} % (bias {100 * np.mean(errs_plain[1:]):+.1f} %);"
          f" roofline whole-model mean |error| {100 * np.mean(np.abs(errs_model)):.1f} %")
    summary = {"hardware": res.hardware.to_dict(), "per_subblock_mape": res.mape_after,
               "per_subblock_mape_uncalibrated": res.mape_before, "per_subblock_max_error": res.max_abs_pct_error,
               "per_subblock_rows": res.table(), "measurement_noise": noise, "rounds": args.rounds,
               "additivity_errors": errs, "additivity_errors_plain_sum": errs_plain,
               "additivity_mean_abs_error_out_of_sample": float(np.mean(np.abs(out_of_sample))),
               "cache_spill": spill.to_dict(), "cache_spill_gamma_detail": gdet, "parent_decode_excess_ms": excess,
               "architectures": detail, "roofline_whole_model_errors": errs_model}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\nwrote {out / 'hardware.json'} (use: puzzlekit profile PARENT --hardware {out / 'hardware.json'} ...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
