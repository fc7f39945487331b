"""A Pyomo model solved by HiGHS (Pyomo's ``contrib.solver`` HiGHS interface).

Solutions are never loaded automatically (Pyomo raises on an infeasible model
otherwise); they are loaded only when the termination says one exists.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .base import Backend, SolveOptions

__all__ = ["PyomoHighsBackend"]


class PyomoHighsBackend(Backend):
    """Pyomo ConcreteModel + HiGHS."""

    name = "pyomo-highs"
    required_modules = ("pyomo", "highspy")
    capabilities = frozenset({"time_limit", "mip_gap", "float_exact", "bound", "threads"})
    install_hint = "pip install pyomo highspy"
    description = "Pyomo model, HiGHS solver"

    def solve(self, problem: Any, options: SolveOptions) -> Any:
        import pyomo.environ as pyo
        from pyomo.contrib.solver.common.results import SolutionStatus, TerminationCondition
        from pyomo.contrib.solver.solvers.highs import Highs

        from puzzlekit.search.solution import Status

        t0 = time.perf_counter()
        n, L = problem.n, problem.num_layers
        m = pyo.ConcreteModel()
        m.x = pyo.Var(range(n), within=pyo.Binary)
        c = problem.c.tolist()
        m.obj = pyo.Objective(expr=sum(c[j] * m.x[j] for j in range(n)), sense=pyo.minimize)
        groups = problem.layer_groups
        m.cover = pyo.Constraint(range(L), rule=lambda mm, i: sum(mm.x[int(j)] for j in groups[i]) == 1)
        G, lo, hi, _ = problem.side_rows()
        rows = []
        for r in range(G.shape[0]):
            nz = np.flatnonzero(G[r])
            coef = G[r, nz].tolist()
            expr = sum(a * m.x[int(j)] for a, j in zip(coef, nz))
            rows.append((None if not np.isfinite(lo[r]) else float(lo[r]), expr,
                         None if not np.isfinite(hi[r]) else float(hi[r])))
        m.side = pyo.Constraint(range(len(rows)), rule=lambda mm, r: rows[r])
        opt = Highs()
        kw: dict[str, Any] = {"load_solutions": False, "raise_exception_on_nonoptimal_result": False,
                              "rel_gap": float(options.mip_gap), "abs_gap": 1e-9, "tee": bool(options.verbose),
                              "solver_options": {"mip_feasibility_tolerance": 1e-9, **dict(options.extra)}}
        if options.time_limit is not None:
            kw["time_limit"] = max(1e-3, float(options.time_limit))
        if options.threads is not None:
            kw["threads"] = int(options.threads)
        res = opt.solve(m, **kw)
        TC, SS = TerminationCondition, SolutionStatus
        tc = res.termination_condition
        has_sol = res.solution_status in (SS.optimal, SS.feasible)
        if tc == TC.convergenceCriteriaSatisfied and has_sol:
            status = Status.OPTIMAL
        elif tc in (TC.provenInfeasible, TC.locallyInfeasible, TC.infeasibleOrUnbounded):
            status = Status.INFEASIBLE
        elif has_sol and tc in (TC.maxTimeLimit, TC.iterationLimit, TC.interrupted, TC.objectiveLimit):
            status = Status.FEASIBLE
        else:
            status = Status.ERROR
        chosen = None
        if status.has_solution:
            res.solution_loader.load_vars()
            chosen = np.flatnonzero(np.array([m.x[j].value or 0.0 for j in range(n)]) > 0.5)
        bound = res.objective_bound if status.has_solution else None
        bound = float(bound) if bound is not None and np.isfinite(bound) else None
        return problem.make_solution(chosen, status, solver=self.name, seconds=time.perf_counter() - t0,
                                     bound=bound, message="" if status is not Status.ERROR else f"Pyomo: {tc}")
