"""Problem families (``puzzlekit.search.families``): the default against HiGHS and python-mip/CBC.

    python benchmarks/solvers.py --families [--instances 5] [--layers 30] [--per-layer 24]

For each family, ``--instances`` seeded instances (1-4 budgets drawn per instance); each is solved by
the default (``search(p)``), HiGHS (``solver="highs"``) and a python-mip/CBC model of the same problem
(one binary per candidate, tight gaps as in the reference cases), in that order, in one process; the
answers must agree (objective to 1e-7 relative, or all infeasible).  Prints per family the medians and
the default's against the faster of the two others (target: at most 1.5x + 0.05 s), and the sums.
"""

from __future__ import annotations

import math
import statistics
import time

import numpy as np

MIP_GAP, MIP_GAP_ABS = 1e-9, 1e-10


def cbc_objective(p, time_limit: float) -> float | None:
    """python-mip/CBC on the problem's arrays (model build included); None when infeasible."""
    import mip

    m = mip.Model(sense=mip.MINIMIZE, solver_name=mip.CBC)
    m.verbose = 0
    x = [m.add_var(var_type=mip.BINARY) for _ in range(p.n)]
    for grp in p.layer_groups:
        m += mip.xsum(x[int(j)] for j in grp) == 1
    G, lo, hi, _ = p.side_rows()
    for r in range(G.shape[0]):
        e = mip.xsum(float(G[r, j]) * x[int(j)] for j in np.flatnonzero(G[r]))
        if math.isfinite(hi[r]):
            m += e <= float(hi[r])
        if math.isfinite(lo[r]):
            m += e >= float(lo[r])
    c = p.c
    m.objective = mip.xsum(float(c[j]) * x[j] for j in range(p.n))
    m.max_mip_gap, m.max_mip_gap_abs = MIP_GAP, MIP_GAP_ABS
    st = m.optimize(max_seconds=time_limit)
    if st == mip.OptimizationStatus.INFEASIBLE:
        return None
    if st != mip.OptimizationStatus.OPTIMAL:
        return math.nan
    return float(p.objective[[j for j in range(p.n) if x[j].x > 0.5]].sum())


def run(instances: int, layers: int, per_layer: int, time_limit: float) -> None:
    from puzzlekit.errors import InfeasibleError
    from puzzlekit.search import search
    from puzzlekit.search.families import FAMILIES

    def ours(p, solver):
        try:
            return search(p, solver=solver, time_limit=time_limit).objective
        except InfeasibleError:
            return None

    warm = FAMILIES["shared"](0, 6, 4, 2)  # load every library before timing
    ours(warm, None), ours(warm, "highs"), cbc_objective(warm, 10)
    print(f"families: {instances} instances each, {layers} layers x {per_layer} candidates per layer "
          f"(+ spans), 1-4 budgets; medians in seconds")
    print(f"{'family':12s} {'default':>8s} {'HiGHS':>8s} {'CBC':>8s}  {'default / fastest other':>24s}  target")
    tot = {"default": 0.0, "highs": 0.0, "cbc": 0.0, "fastest": 0.0}
    ok_all = True
    for name, make in FAMILIES.items():
        t = {"default": [], "highs": [], "cbc": []}
        for seed in range(instances):
            p = make(seed, layers, per_layer)
            t0 = time.perf_counter()
            a = ours(p, None)
            t["default"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            b = ours(p, "highs")
            t["highs"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            c = cbc_objective(p, time_limit)
            t["cbc"].append(time.perf_counter() - t0)
            if a is None:  # infeasible: HiGHS agrees, CBC agrees or stopped at its time limit (nan)
                agree = b is None and (c is None or math.isnan(c))
            else:
                agree = b is not None and all(abs(v - a) <= 1e-7 * max(1.0, abs(a)) for v in (b, c)
                                              if v is not None and not math.isnan(v)) and c is not None
            assert agree, f"{name} seed {seed}: default {a}, HiGHS {b}, CBC {c}"
        med = {k: statistics.median(v) for k, v in t.items()}
        fast = min(med["highs"], med["cbc"])
        ok = med["default"] <= 1.5 * fast + 0.05
        ok_all &= ok
        for k in ("default", "highs", "cbc"):
            tot[k] += med[k]
        tot["fastest"] += fast
        print(f"{name:12s} {med['default']:8.3f} {med['highs']:8.3f} {med['cbc']:8.3f}  "
              f"{med['default'] / fast:23.2f}x  {'ok' if ok else 'MISSED'} (<= {1.5 * fast + 0.05:.3f} s)")
    print(f"{'summed':12s} {tot['default']:8.3f} {tot['highs']:8.3f} {tot['cbc']:8.3f}  "
          f"default vs the faster per family summed ({tot['fastest']:.3f} s): "
          f"{tot['fastest'] / tot['default']:.2f}x; vs HiGHS {tot['highs'] / tot['default']:.2f}x, "
          f"vs CBC {tot['cbc'] / tot['default']:.2f}x; every family within target: {ok_all}")
