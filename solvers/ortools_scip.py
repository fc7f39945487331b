"""SCIP through OR-Tools' linear solver wrapper (``pywraplp``).

OR-Tools bundles its own COIN-OR libraries; once python-mip has loaded *its* CBC libraries in the
same process (the benchmarks load it), ``pywraplp`` cannot be imported (``libOsiClp.so.1: undefined
symbol``).  Then the solve runs in a fresh interpreter (:mod:`._isolated`) and the answer says so
(``info["isolated"]``).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from .base import Backend, SolveOptions

__all__ = ["ScipBackend"]


class ScipBackend(Backend):
    """SCIP (bundled with OR-Tools) on the float problem."""

    name = "ortools-scip"
    required_modules = ("ortools",)
    capabilities = frozenset({"time_limit", "mip_gap", "warm_start", "threads", "float_exact", "bound"})
    install_hint = "pip install ortools"
    description = "SCIP via OR-Tools' linear solver wrapper"

    def solve(self, problem: Any, options: SolveOptions) -> Any:
        try:
            from ortools.linear_solver import pywraplp
        except ImportError as e:
            if "undefined symbol" not in str(e) and "mip" not in sys.modules:
                raise
            from ._isolated import solve_isolated

            return solve_isolated(self.name, problem, options, options.time_limit)

        from puzzlekit.search.solution import Status

        t0 = time.perf_counter()
        n = problem.n
        s = pywraplp.Solver.CreateSolver("SCIP")
        if s is None:
            return problem.make_solution(None, Status.ERROR, solver=self.name, seconds=time.perf_counter() - t0,
                                         message="this OR-Tools build has no SCIP")
        x = [s.BoolVar(f"x{j}") for j in range(n)]
        for grp in problem.layer_groups:
            ct = s.Constraint(1.0, 1.0)
            for j in grp:
                ct.SetCoefficient(x[int(j)], 1.0)
        G, lo, hi, _ = problem.side_rows()
        inf = s.infinity()
        for r in range(G.shape[0]):
            ct = s.Constraint(float(lo[r]) if np.isfinite(lo[r]) else -inf, float(hi[r]) if np.isfinite(hi[r]) else inf)
            for j in np.flatnonzero(G[r]):
                ct.SetCoefficient(x[int(j)], float(G[r, j]))
        obj = s.Objective()
        for j, v in enumerate(problem.c.tolist()):
            obj.SetCoefficient(x[j], v)
        obj.SetMinimization()
        if options.time_limit is not None:
            s.SetTimeLimit(max(1, int(1000 * options.time_limit)))
        if options.threads:
            s.SetNumThreads(int(options.threads))
        s.SetSolverSpecificParametersAsString(
            "numerics/feastol = 1e-9\nlimits/absgap = 1e-9\n"
            + "".join(f"{k} = {v}\n" for k, v in options.extra.items()))
        if options.verbose:
            s.EnableOutput()
        if options.warm_start is not None:
            on = set(int(j) for j in options.warm_start)
            s.SetHint(x, [1.0 if j in on else 0.0 for j in range(n)])
        params = pywraplp.MPSolverParameters()
        params.SetDoubleParam(pywraplp.MPSolverParameters.RELATIVE_MIP_GAP, float(options.mip_gap))
        st = s.Solve(params)
        table = {pywraplp.Solver.OPTIMAL: Status.OPTIMAL, pywraplp.Solver.FEASIBLE: Status.FEASIBLE,
                 pywraplp.Solver.INFEASIBLE: Status.INFEASIBLE}
        status = table.get(st, Status.ERROR)
        chosen = None
        if status.has_solution:
            chosen = np.flatnonzero(np.array([v.solution_value() for v in x]) > 0.5)
        bound = float(obj.BestBound()) if status.has_solution else None
        return problem.make_solution(chosen, status, solver=self.name, seconds=time.perf_counter() - t0,
                                     bound=bound, message="" if status is not Status.ERROR else f"SCIP status {st}")
