"""Search speed vs the reference implementations' models (python-mip/CBC, PuLP/CBC), in one process.

    python benchmarks/solvers.py [--library ../shared/data/puzzle-llama-3.3-70b-block-library] [--synthetic]

Prints ratios measured in the same run (solver libraries loaded before timing).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

B3 = {"memory_mib": 0.85 * 80 * 1437.109375, "runtime_ms": 0.85 * 80 * 816.9723410644532}
CASES = [("single H100", {"memory_mib": 80000, "runtime_ms": 51200}, 1),
         ("edge", {"memory_mib": 40000}, 1), ("diverse top-3", B3, 3)]


def ref_model(lib, budgets, k, tool):
    """What NVlabs (python-mip) / ModelOpt (PuLP) do: one binary per (layer, variant), CBC, k solves."""
    obj = lib.metric_vector("kl_div")
    names = list(budgets)
    C = lib.cost_matrix(names)
    first = np.array([c.first for c in lib.candidates])
    L, n = lib.num_layers, len(obj)
    out, prev = [], []
    for _ in range(k):
        if tool == "mip":
            import mip

            m = mip.Model(sense=mip.MINIMIZE, solver_name=mip.CBC)
            m.verbose = 0
            x = [m.add_var(var_type=mip.BINARY) for _ in range(n)]
            for i in range(L):
                m += mip.xsum(x[j] for j in np.flatnonzero(first == i)) == 1
            for r, nm in enumerate(names):
                m += mip.xsum(float(C[j, r]) * x[j] for j in range(n)) <= budgets[nm]
            for y in prev:
                m += mip.xsum(x[j] for j in y) <= L - 20
            m.objective = mip.xsum(float(obj[j]) * x[j] for j in range(n))
            m.max_mip_gap = 0
            m.max_mip_gap_abs = 1e-9
            m.optimize()
            chosen = [j for j in range(n) if x[j].x > 0.5]
        else:
            import pulp

            m = pulp.LpProblem("p", pulp.LpMinimize)
            x = [pulp.LpVariable(f"x{j}", cat="Binary") for j in range(n)]
            m += pulp.lpSum(float(obj[j]) * x[j] for j in range(n))
            for i in range(L):
                m += pulp.lpSum(x[j] for j in np.flatnonzero(first == i)) == 1
            for r, nm in enumerate(names):
                m += pulp.lpSum(float(C[j, r]) * x[j] for j in range(n)) <= budgets[nm]
            for y in prev:
                m += pulp.lpSum(x[j] for j in y) <= L - 20
            m.solve(pulp.PULP_CBC_CMD(msg=0, gapRel=0))
            chosen = [j for j in range(n) if x[j].value() > 0.5]
        prev.append(chosen)
        out.append(float(obj[chosen].sum()))
    return out


def timed(f):
    t = time.perf_counter()
    r = f()
    return time.perf_counter() - t, r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--library", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"
                                             / "puzzle-llama-3.3-70b-block-library"))
    ap.add_argument("--synthetic", action="store_true", help="also the 162 x 200 x 3 synthetic problem")
    ap.add_argument("--skip-sweep-reference", action="store_true")
    ap.add_argument("--synthetic-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.synthetic_only:
        return synthetic()
    from puzzlekit.formats import import_nvlabs
    from puzzlekit.search import search, search_diverse, sweep

    lib = import_nvlabs(args.library)
    search(lib, "kl_div", CASES[0][1])  # load every library before timing
    ref_model(lib, CASES[1][1], 1, "mip")
    ref_model(lib, CASES[1][1], 1, "pulp")
    ours_total = ref_total = 0.0
    for name, b, k in CASES:
        if k == 1:
            t_ours, s = timed(lambda b=b: [search(lib, "kl_div", b).objective])
        else:
            t_ours, s = timed(lambda b=b, k=k: [x.objective for x in search_diverse(
                lib, "kl_div", b, num_solutions=k, min_diversity=20)])
        t_mip, r_mip = timed(lambda b=b, k=k: ref_model(lib, b, k, "mip"))
        t_pulp, r_pulp = timed(lambda b=b, k=k: ref_model(lib, b, k, "pulp"))
        assert np.allclose(s, r_mip, atol=1e-6) and np.allclose(s, r_pulp, atol=1e-6), (s, r_mip, r_pulp)
        best = min(t_mip, t_pulp)
        ours_total += t_ours
        ref_total += best
        print(f"{name:14s} ours {t_ours:7.3f}s  python-mip {t_mip:7.3f}s  PuLP {t_pulp:7.3f}s  "
              f"speed-up vs faster {best / t_ours:6.1f}x  objectives {[round(v, 6) for v in s]}")
    print(f"reference cases summed: {ref_total / ours_total:.1f}x faster than the faster reference per case")

    vals = np.linspace(30000, 115000, 100)
    t_ours, res = timed(lambda: sweep(lib, "kl_div", "memory_mib", vals))
    if not args.skip_sweep_reference:
        t_mip, ref = timed(lambda: [ref_model(lib, {"memory_mib": v}, 1, "mip")[0] for v in vals])
        ours = [s.objective for _, s in res.points]
        err = max(abs(a - b) for a, b in zip(ours, ref))
        print(f"100-point memory sweep: ours {t_ours:.3f}s, 100 python-mip solves {t_mip:.3f}s: "
              f"{t_mip / t_ours:.1f}x, max objective difference {err:.2e}")
    if args.synthetic:
        # a separate process: python-mip's CBC and OR-Tools' CBC/Osi libraries clash in one process
        import subprocess
        import sys

        subprocess.run([sys.executable, __file__, "--synthetic-only"], check=True)


def synthetic() -> None:
    if True:
        from puzzlekit.solvers import available_solvers

        from puzzlekit.search import Problem, search

        r = np.random.default_rng(0)
        L, k = 162, 200
        first = np.repeat(np.arange(L), k)
        costs = r.uniform(1, 100, (L * k, 3))
        obj = np.exp(-costs.sum(1) / 60) * r.uniform(0.5, 1.5, L * k)
        p = Problem(L, first, first, obj, costs, upper=costs.mean(0) * L * 0.6)
        for s in available_solvers():
            t, sol = timed(lambda s=s: search(p, solver=s, time_limit=120))
            print(f"synthetic 162x200x3 {s:14s} {t:7.2f}s {sol.status.value} objective {sol.objective:.6f}")


if __name__ == "__main__":
    main()
