"""OR-Tools CP-SAT on an integer-scaled problem.

CP-SAT needs integer coefficients.  Each side row is scaled by a power of two
``s`` (so its largest coefficient is about 1e12 or less); costs are rounded
**up** and budgets **down** (``<=`` rows; the mirror for ``>=`` rows), so
every CP-SAT answer is feasible for the float problem.  The price is that a
float-feasible architecture within ``(layers + 1) / s`` of a budget may be
excluded: that worst-case loss per budget is reported in
``Solution.info["scaling_loss"]``, and the objective's rounding bound in
``info["objective_resolution"]``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from .base import Backend, SolveOptions

__all__ = ["CpSatBackend", "scale_for"]

_TARGET = 1e12


def scale_for(values: np.ndarray) -> float:
    """A power of two that maps ``max |values|`` to at most 1e12."""
    mx = float(np.max(np.abs(values))) if values.size else 0.0
    if mx == 0.0:
        return 1.0
    return 2.0 ** math.floor(math.log2(_TARGET / mx))


class CpSatBackend(Backend):
    """OR-Tools CP-SAT (integer-scaled: costs rounded up, budgets down)."""

    name = "ortools-cpsat"
    required_modules = ("ortools",)
    capabilities = frozenset({"time_limit", "mip_gap", "warm_start", "threads", "bound"})
    install_hint = "pip install ortools"
    description = "OR-Tools CP-SAT, integer-scaled (answers stay float-feasible)"

    def solve(self, problem: Any, options: SolveOptions) -> Any:
        from ortools.sat.python import cp_model

        from puzzlekit.search.solution import Status

        t0 = time.perf_counter()
        n, L = problem.n, problem.num_layers
        model = cp_model.CpModel()
        x = [model.new_bool_var(f"x{j}") for j in range(n)]
        for grp in problem.layer_groups:
            model.add_exactly_one([x[int(j)] for j in grp])
        G, lo, hi, names = problem.side_rows()
        loss: dict[str, float] = {}
        for r in range(G.shape[0]):
            nz = np.flatnonzero(G[r])
            row = G[r, nz]
            integral = np.all(row == np.round(row)) and np.max(np.abs(row), initial=0) < 2**50
            s = 1.0 if integral else scale_for(row)
            worst = 0.0
            if math.isfinite(hi[r]):
                coef = np.ceil(row * s).astype(np.int64)
                model.add(sum(int(a) * x[int(j)] for a, j in zip(coef, nz)) <= math.floor(hi[r] * s))
                worst = max(worst, 0.0 if integral else (L + 1) / s)
            if math.isfinite(lo[r]):
                coef = np.floor(row * s).astype(np.int64)
                model.add(sum(int(a) * x[int(j)] for a, j in zip(coef, nz)) >= math.ceil(lo[r] * s))
                worst = max(worst, 0.0 if integral else (L + 1) / s)
            loss[names[r]] = worst
        so = scale_for(problem.c)
        cobj = np.round(problem.c * so).astype(np.int64)
        model.minimize(sum(int(a) * x[j] for j, a in enumerate(cobj) if a != 0))
        if options.warm_start is not None:
            on = set(int(j) for j in options.warm_start)
            for j in range(n):
                model.add_hint(x[j], j in on)
        solver = cp_model.CpSolver()
        p = solver.parameters
        p.num_workers = int(options.threads or 2)
        p.relative_gap_limit = float(options.mip_gap)
        p.log_search_progress = bool(options.verbose)
        if options.time_limit is not None:
            p.max_time_in_seconds = max(1e-3, float(options.time_limit))
        for k, v in options.extra.items():
            setattr(p, k, v)
        st = solver.solve(model)
        table = {cp_model.OPTIMAL: Status.OPTIMAL, cp_model.FEASIBLE: Status.FEASIBLE,
                 cp_model.INFEASIBLE: Status.INFEASIBLE}
        status = table.get(st, Status.ERROR)
        chosen = None
        if status.has_solution:
            chosen = np.array([j for j in range(n) if solver.boolean_value(x[j])], dtype=np.int64)
        bound = solver.best_objective_bound / so if status.has_solution else None
        res_obj = (L + 1) * 0.5 / so
        if bound is not None:
            bound -= res_obj  # the scaled bound is a bound on the rounded objective
        info = {"scaling_loss": loss, "objective_resolution": res_obj, "objective_scale": so}
        msg = "" if status is not Status.ERROR else f"CP-SAT: {solver.status_name(st)}"
        return problem.make_solution(chosen, status, solver=self.name, seconds=time.perf_counter() - t0,
                                     bound=bound, message=msg, info=info)
