"""How well the measured cost model predicts whole models, with and without the fit on whole models
(``profile.whole``, :mod:`puzzlekit.profilers.whole`), on architectures that no fit saw.

    python benchmarks/whole_fit.py                       # SmolLM2-135M-Instruct, as the smollm2-135m preset
    python benchmarks/whole_fit.py --fit 24 --heldout 12 --json whole_fit.json

One process, one thread, the preset's scenario (batch 1, prefill 64, decode 8, fp32):

1. ``measure_profile`` as the preset runs it (2 passes, two-point cache spill): the summed model;
2. timed against the parent, interleaved (:func:`puzzlekit.profilers.whole.time_against_parent`), all in three
   passes (a burst of load rarely hits one model twice): the axis shapes (each non-parent sub-block kind on
   every layer, :func:`~puzzlekit.profilers.whole.axis_architectures`), ``--fit`` architectures sampled from
   the preset's space, and the held-out ones: ``--heldout`` more samples (another seed) and the shapes the
   baselines produce at knobs no fit saw: uniform FFN width 960 and 576 (between the library's widths), every
   other attention removed, a third of the layers removed whole, KV heads 3 -> 1 on every other layer;
3. fits from the same timings, each on the first pass (the preset's single timing) unless it says otherwise:
   least squares on the ``--fit`` samples (the presets before session 29); Huber's robust fit on them; the
   robust fit with the samples its leave-one-out misses by > 8 % confirmed by their other two passes
   (:func:`~puzzlekit.profilers.whole.confirmed_fit`); the same on the axis shapes plus as many samples as
   make ``--fit`` in all (the smollm2-135m preset now: the same number of timed models); the robust fit on
   the median of all three passes of every sample (three times the timing);
4. each model's speed-up error on the held-out ones (measured: the median of their three passes),
   |predicted / measured - 1|, mean and max; the ratio of
   the mean errors (summed / fitted) is the benchmark's figure.  Every model is judged against the same
   measurements in the same run, so a shared machine's load affects them alike.

The blocks are randomly initialised (time does not depend on the weights), so no BLD is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from types import SimpleNamespace

import torch

from puzzlekit.architecture import Architecture, Scenario
from puzzlekit.blocks import AttentionConfig, BlockConfig, FFNConfig


def structured(spec):
    """The baselines' shapes at knobs that are not axis shapes: uniform FFN width between the library's
    widths, attention removed on every other layer, whole layers removed, KV heads reduced on half the layers."""
    L, pb = spec.num_hidden_layers, spec.parent_block()
    none_a, none_f = AttentionConfig.make_no_op(), FFNConfig.make_no_op()
    out = {}
    for w in (960, 576):
        out[f"uniform-ffn {w}"] = [BlockConfig(pb.attention, FFNConfig.swiglu(w))] * L
    out["drop-attention (every other)"] = [BlockConfig(none_a if i % 2 else pb.attention, pb.ffn) for i in range(L)]
    out["drop-layers (a third)"] = [BlockConfig(none_a, none_f) if i % 3 == 1 else pb for i in range(L)]
    out["gqa:1 every other layer"] = [BlockConfig(AttentionConfig.gqa(1) if i % 2 else pb.attention, pb.ffn)
                                      for i in range(L)]
    return {k: Architecture(spec, tuple(v)) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fit", type=int, default=24, help="architectures timed for a fit (the preset's 24)")
    ap.add_argument("--heldout", type=int, default=12, help="sampled architectures held out from the fit")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    from puzzlekit.profilers.cost_model import cost_model, measure_profile
    from puzzlekit.profilers.whole import (
        axis_architectures,
        confirmed_fit,
        fit_corrections,
        sample_architectures,
        time_against_parent,
    )

    from puzzlekit.bld import default_search_space
    from puzzlekit.fetch import smollm2_gguf
    from puzzlekit.model import load_parent

    t0 = time.perf_counter()
    parent = load_parent(smollm2_gguf()).requires_grad_(False).eval()
    spec = parent.config.parent_spec
    space = default_search_space(spec, ffn_fractions=(1.0, 0.75, 0.5, 0.25, 0.125), kv_heads=(3, 1))
    lib = SimpleNamespace(blocks=[BlockConfig(a, f) for a in space.attention for f in space.ffn])
    scen = Scenario("local-cpu", dtype="fp32", batch=1, prefill=64, decode=8)
    prof = measure_profile(parent, lib, scen, repeats=args.repeats, threads=1, passes=2, spill="two-point",
                           seed=args.seed, progress=True)
    summed = cost_model(prof, spec)
    axes = axis_architectures(spec, space.attention, space.ffn)
    sampled = sample_architectures(spec, space.attention, space.ffn, args.fit, seed=args.seed)
    held = {f"sample {i}": a for i, a in enumerate(sample_architectures(spec, space.attention, space.ffn,
                                                                         args.heldout, seed=args.seed + 1000))}
    held.update(structured(spec))
    # every model timed in three passes (a burst of load rarely hits one model twice): the fits use the first
    # pass (the preset's single timing) and, where they confirm a surprising sample, its other two; the
    # held-out models are judged by the median of their three
    fit_archs, held_archs = axes + sampled, list(held.values())
    passes = [time_against_parent(parent, fit_archs + held_archs, scen, threads=1, repeats=args.repeats,
                                  seed=args.seed + 1000 * k)["speedups"] for k in range(3)]
    n_fit, n_axes = len(fit_archs), len(axes)
    runs = [[p[i] for p in passes] for i in range(n_fit)]
    pb, pms = parent.architecture.blocks, float(prof["parent_measured_ms"])
    n_mix = args.fit - n_axes

    def variant(idx, robust=True, confirm=False, all3=False):
        def fit_on(sp):
            return fit_corrections(summed, pb, pms, [fit_archs[i].blocks for i in idx], sp, robust=robust)

        sub = [list(runs[i]) if all3 else [runs[i][0]] for i in idx]
        retime = (lambda js: [runs[idx[j]][1:] for j in js]) if confirm else None
        fit, again = confirmed_fit(fit_on, sub, retime)
        fit["retimed"] = len(again)
        return fit

    mix = list(range(n_axes, n_fit))
    fits = {"least squares": variant(mix, robust=False), "Huber": variant(mix),
            "Huber, confirmed": variant(mix, confirm=True),
            f"Huber, {n_axes} axes + {n_mix}, confirmed": variant(list(range(n_axes)) + mix[:n_mix], confirm=True),
            "Huber, 3 timings each": variant(mix, all3=True)}
    models = {"summed": summed}
    for name, f in fits.items():
        models[name] = cost_model({**prof, "whole_fit": f}, spec)
    timed = {"speedups": [statistics.median(p[n_fit + j] for p in passes) for j in range(len(held_archs))]}
    ref = {k: m.runtime(pb) for k, m in models.items()}
    rows = []
    for (name, arch), meas in zip(held.items(), timed["speedups"]):
        r = {"name": name, "measured": meas}
        for k, m in models.items():
            r[k] = ref[k] / m.runtime(arch.blocks)
            r[k + " error"] = abs(r[k] / meas - 1)
        rows.append(r)

    def stats(sel, key):
        xs = [r[key] for r in rows if sel(r)]
        return {"mean": statistics.mean(xs), "max": max(xs), "n": len(xs)}

    groups = {"sampled": lambda r: r["name"].startswith("sample"),
              "baseline shapes": lambda r: not r["name"].startswith("sample"), "all": lambda r: True}
    keep = ("samples", "adopted", "summed_error", "loo_error", "intercept_ms", "downweighted", "retimed")
    out = {"fits": {k: {x: f[x] for x in keep} for k, f in fits.items()},
           "parent_measured_ms": prof["parent_measured_ms"], "heldout": rows,
           "fit_timings": {"axes": dict(zip([a.blocks[0].key for a in axes], runs[:n_axes])),
                           "sampled": runs[n_axes:], "heldout": [[p[n_fit + j] for p in passes]
                                                                 for j in range(len(held_archs))]},
           "errors": {g: {k: stats(sel, k + " error") for k in models} for g, sel in groups.items()},
           "load": os.getloadavg(), "seconds": time.perf_counter() - t0}

    print()
    for k, f in fits.items():
        print(f"fit {k!r} on {f['samples']} architectures: adopted {f['adopted']}; leave-one-out speed-up error "
              f"{100 * f['loo_error']['mean']:.1f} % (max {100 * f['loo_error']['max']:.1f} %), summed "
              f"{100 * f['summed_error']['mean']:.1f} %; down-weighted {len(f['downweighted'])}, timed again {f['retimed']}")
    names = list(models)
    print(f"\n{'held-out architecture':30s} {'measured':>9s} " + " ".join(f"{k[:12]:>12s}" for k in names))
    for r in rows:
        print(f"{r['name']:30s} {r['measured']:8.3f}x " + " ".join(f"{r[k]:11.3f}x" for k in names))
    print("\nmean (max) speed-up error on the held-out architectures; summed / fitted")
    for g, e in out["errors"].items():
        s = e["summed"]["mean"]
        print(f"{g:16s} (n={e['summed']['n']:2d}): " + "; ".join(
            f"{k} {100 * v['mean']:.1f} % ({100 * v['max']:.1f} %)" + ("" if k == "summed" else
                                                                    f" {s / max(v['mean'], 1e-9):.1f}x")
            for k, v in e.items()))
    print(f"load {out['load'][0]:.1f}; {out['seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
