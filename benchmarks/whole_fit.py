"""How well the measured cost model predicts whole models, with and without the fit on whole models
(``profile.whole``, :mod:`puzzlekit.profilers.whole`), on architectures that neither fit saw.

    python benchmarks/whole_fit.py                       # SmolLM2-135M-Instruct, as the smollm2-135m preset
    python benchmarks/whole_fit.py --fit 24 --heldout 12 --json whole_fit.json

One process, one thread, the preset's scenario (batch 1, prefill 64, decode 8, fp32):

1. ``measure_profile`` as the preset runs it (2 passes, two-point cache spill, ``--fit`` architectures
   sampled from the preset's space timed whole): the summed model and the fitted one, from the same
   timings;
2. held-out architectures: ``--heldout`` more samples (another seed) and the shapes the baselines
   produce, which the Dirichlet samples rarely resemble: uniform FFN width (50 % and 25 %, every
   attention kept), every other attention removed, a third of the layers removed whole, KV heads 3 -> 1
   everywhere; each timed against the parent interleaved (:func:`puzzlekit.profilers.whole.time_against_parent`);
3. each model's speed-up error |predicted / measured - 1|, mean and max, summed vs fitted; the ratio of
   the mean errors (summed / fitted) is the benchmark's figure.  Both models are judged against the
   same measurements in the same run, so a shared machine's load affects both alike.

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


def structured(spec, ffn_widths):
    """The baselines' shapes: uniform FFN width, attention removed on every other layer, whole layers
    removed, KV heads reduced everywhere."""
    L, pb = spec.num_hidden_layers, spec.parent_block()
    none_a, none_f = AttentionConfig.make_no_op(), FFNConfig.make_no_op()
    out = {}
    for frac in (0.5, 0.25):
        w = min(ffn_widths, key=lambda x: abs(x - frac * spec.intermediate_size))
        out[f"uniform-ffn {w}"] = [BlockConfig(pb.attention, FFNConfig.swiglu(w))] * L
    out["drop-attention (every other)"] = [BlockConfig(none_a if i % 2 else pb.attention, pb.ffn) for i in range(L)]
    out["drop-layers (a third)"] = [BlockConfig(none_a, none_f) if i % 3 == 1 else pb for i in range(L)]
    out["gqa:1 everywhere"] = [BlockConfig(AttentionConfig.gqa(1), pb.ffn)] * L
    return {k: Architecture(spec, tuple(v)) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fit", type=int, default=24, help="architectures the fit samples (the preset's 24)")
    ap.add_argument("--heldout", type=int, default=12, help="sampled architectures held out from the fit")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    from puzzlekit.profilers.cost_model import cost_model, measure_profile
    from puzzlekit.profilers.whole import sample_architectures, time_against_parent

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
                           whole=args.fit, seed=args.seed, progress=True)
    fit = prof["whole_fit"]
    summed = cost_model({k: v for k, v in prof.items() if k != "whole_fit"}, spec)
    fitted = cost_model(prof, spec)

    widths = sorted({f.intermediate_size for f in space.ffn if not f.no_op and not f.linear})
    held = {f"sample {i}": a for i, a in enumerate(sample_architectures(spec, space.attention, space.ffn,
                                                                         args.heldout, seed=args.seed + 1000))}
    held.update(structured(spec, widths))
    timed = time_against_parent(parent, list(held.values()), scen, threads=1, repeats=args.repeats,
                                seed=args.seed + 1000)
    p_sum, p_fit = summed.runtime(parent.architecture.blocks), fitted.runtime(parent.architecture.blocks)
    rows = []
    for (name, arch), meas in zip(held.items(), timed["speedups"]):
        s = p_sum / summed.runtime(arch.blocks)
        f = p_fit / fitted.runtime(arch.blocks)
        rows.append({"name": name, "measured": meas, "summed": s, "fitted": f,
                     "summed_error": abs(s / meas - 1), "fitted_error": abs(f / meas - 1)})

    def stats(sel, key):
        xs = [r[key] for r in rows if sel(r)]
        return {"mean": statistics.mean(xs), "max": max(xs), "n": len(xs)}

    groups = {"sampled": lambda r: r["name"].startswith("sample"),
              "baseline shapes": lambda r: not r["name"].startswith("sample"), "all": lambda r: True}
    out = {"fit": {k: fit[k] for k in ("samples", "adopted", "summed_error", "loo_error", "intercept_ms")},
           "parent_measured_ms": prof["parent_measured_ms"], "heldout": rows,
           "errors": {g: {"summed": stats(sel, "summed_error"), "fitted": stats(sel, "fitted_error")}
                      for g, sel in groups.items()},
           "load": os.getloadavg(), "seconds": time.perf_counter() - t0}

    print(f"\nfit on {fit['samples']} sampled architectures: adopted {fit['adopted']}; leave-one-out speed-up error "
          f"{100 * fit['loo_error']['mean']:.1f} % (max {100 * fit['loo_error']['max']:.1f} %), "
          f"summed {100 * fit['summed_error']['mean']:.1f} % (max {100 * fit['summed_error']['max']:.1f} %)")
    print(f"\n{'held-out architecture':32s} {'measured':>9s} {'summed':>8s} {'fitted':>8s}")
    for r in rows:
        print(f"{r['name']:32s} {r['measured']:8.3f}x {r['summed']:7.3f}x {r['fitted']:7.3f}x")
    print()
    for g, e in out["errors"].items():
        s, f = e["summed"], e["fitted"]
        print(f"{g:16s} (n={s['n']:2d}): speed-up error summed {100 * s['mean']:5.1f} % (max {100 * s['max']:5.1f} %), "
              f"fitted {100 * f['mean']:5.1f} % (max {100 * f['max']:5.1f} %); summed / fitted = "
              f"{s['mean'] / max(f['mean'], 1e-9):.1f}x")
    print(f"load {out['load'][0]:.1f}; {out['seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
