"""Throughput at the batch that fits: the whole batch scan against one fixed-batch solve, in one process.

    python benchmarks/at_fit.py [--library ../shared/data/puzzle-llama-3.3-70b-block-library] [--repeat 5]

On NVIDIA's Llama-3.3-70B block library (h100-sxm roofline, FP8, 1000 + 200 tokens, memory <= 76 GiB,
>= 300K cached tokens), for each target N x the parent's throughput at the batch it fits:

* scan: ``search_at_fit`` from scratch (the cost tables of all 20 batches built, every batch bounded, the
  needed MIPs solved; the exact best over batch x architecture);
* fixed batch: one MIP at batch 256 with the same target (the problem from cached costs, presolve + solve),
  which is what a search at a fixed batch costs.

Medians of ``--repeat`` interleaved repetitions; the ratio scan / fixed batch is the figure.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    import puzzlekit as pk
    from puzzlekit.search import AtFit, Deployment, search

    default = next((p for p in (ROOT.parent / "shared/data/puzzle-llama-3.3-70b-block-library",
                                ROOT.parent.parent / "shared/data/puzzle-llama-3.3-70b-block-library")
                    if p.exists()), ROOT.parent / "shared/data/puzzle-llama-3.3-70b-block-library")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--library", default=str(default))
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    lib = pk.import_nvlabs(a.library)
    dep = Deployment(hardware="h100-sxm", dtype="fp8", prefill=1000, decode=200, memory_gib=76,
                     min_kv_tokens=300_000, measured=False)
    warm = AtFit(lib, "kl_div", dep, parent="super-49b")
    ref = warm.reference().tokens_per_s
    warm.search(min_speedup=3.0)  # imports, HiGHS loaded
    rows = []
    for n in (2.0, 3.0, 4.0, 5.0):
        scan, fixed = [], []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            sol = AtFit(lib, "kl_div", dep, parent="super-49b").search(min_speedup=n)
            scan.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            fs = search(warm.problem(256, n * ref))
            fixed.append(time.perf_counter() - t0)
        solved = sum(r["status"] == "solved" for r in sol.scan)
        s, f = statistics.median(scan), statistics.median(fixed)
        rows.append((n, s, f))
        print(f"{n:g}x: scan {s:.3f} s ({solved} of {len(sol.scan)} batches solved; best batch {sol.batch}, "
              f"ΣKL {sol.objective:.4f}) vs fixed batch 256 {f:.3f} s (ΣKL {fs.objective:.4f}): {s / f:.2f}x the time")
    s = sum(r[1] for r in rows)
    f = sum(r[2] for r in rows)
    print(f"all four targets: scan {s:.2f} s vs fixed batch {f:.2f} s: {s / f:.2f}x the time of one fixed-batch solve")


if __name__ == "__main__":
    main()
