"""HiGHS through highspy's matrix API (the fallback of the default ``puzzlekit-exact``).

The model is passed in one call (``passModel`` with a column-wise matrix), so
building it costs little more than copying the problem's arrays.  HiGHS'
default relative gap (1e-4) is replaced by ``SolveOptions.mip_gap`` (0: a
proven optimum) and its absolute gap (1e-6) by 1e-9, so an optimum is proven
to 1e-9 in objective (what answers "equal to 1e-6" need).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .base import Backend, SolveOptions, chosen_from_values

__all__ = ["HighsBackend", "load_into", "new_highs"]

_banner_done = False


def new_highs() -> Any:
    """A silent ``highspy.Highs`` (HiGHS prints a banner to the C stdout on its first construction)."""
    import highspy

    global _banner_done
    if _banner_done:
        h = highspy.Highs()
    else:
        import os
        import sys

        sys.stdout.flush()
        try:
            fd = sys.stdout.fileno()
        except (AttributeError, OSError, ValueError):
            fd = None
        if fd is None:
            h = highspy.Highs()
        else:
            saved = os.dup(fd)
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, fd)
                h = highspy.Highs()
            finally:
                os.dup2(saved, fd)
                os.close(saved)
                os.close(devnull)
        _banner_done = True
    h.setOptionValue("output_flag", False)
    return h


def load_into(h: Any, problem: Any, *, integer: bool = True) -> None:
    """Pass ``problem`` (minimisation form) to a ``highspy.Highs`` instance."""
    import highspy

    mat = problem.matrix()
    n = problem.n
    lp = highspy.HighsLp()
    lp.num_col_ = n
    lp.num_row_ = int(mat["num_rows"])
    lp.col_cost_ = np.asarray(problem.c, dtype=float)
    lp.col_lower_ = np.zeros(n)
    lp.col_upper_ = np.ones(n)
    lp.row_lower_ = mat["row_lower"]
    lp.row_upper_ = mat["row_upper"]
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = mat["start"].astype(np.int32)
    lp.a_matrix_.index_ = mat["index"].astype(np.int32)
    lp.a_matrix_.value_ = mat["value"]
    if integer:
        lp.integrality_ = [highspy.HighsVarType.kInteger] * n
    h.passModel(lp)


class HighsBackend(Backend):
    """HiGHS (highspy) branch-and-cut on the float problem."""

    name = "highs"
    required_modules = ("highspy",)
    capabilities = frozenset({"time_limit", "mip_gap", "warm_start", "float_exact", "bound"})
    install_hint = "pip install highspy"
    description = "HiGHS via highspy's matrix API (also the exact solver's fallback)"
    presolve_fixing = False  # HiGHS' own reduced-cost fixing with restarts beats ours on the MIP

    def solve(self, problem: Any, options: SolveOptions) -> Any:
        import highspy

        from puzzlekit.search.solution import Status

        t0 = time.perf_counter()
        h = new_highs()
        h.setOptionValue("output_flag", bool(options.verbose))
        h.setOptionValue("mip_rel_gap", float(options.mip_gap))
        h.setOptionValue("mip_abs_gap", 1e-9)  # the default 1e-6 could stop short of "equal to 1e-6"
        if options.time_limit is not None:
            h.setOptionValue("time_limit", max(1e-3, float(options.time_limit)))
        for k, v in options.extra.items():
            h.setOptionValue(k, v)
        load_into(h, problem)
        if options.warm_start is not None:
            x = np.zeros(problem.n)
            x[np.asarray(options.warm_start, dtype=np.int64)] = 1.0
            sol = highspy.HighsSolution()
            sol.col_value = x
            sol.value_valid = True
            h.setSolution(sol)
        h.run()
        ms = h.getModelStatus()
        M = highspy.HighsModelStatus
        table = {
            M.kOptimal: Status.OPTIMAL,
            M.kInfeasible: Status.INFEASIBLE,
            M.kUnboundedOrInfeasible: Status.INFEASIBLE,
            M.kTimeLimit: Status.FEASIBLE,
            M.kIterationLimit: Status.FEASIBLE,
            M.kSolutionLimit: Status.FEASIBLE,
            M.kInterrupt: Status.FEASIBLE,
            M.kObjectiveBound: Status.FEASIBLE,
            M.kObjectiveTarget: Status.FEASIBLE,
        }
        status = table.get(ms, Status.ERROR)
        info = h.getInfo()
        has_sol = info.primal_solution_status == 2  # kSolutionStatusFeasible
        chosen, message = None, ""
        if status.has_solution:
            if has_sol:
                chosen = chosen_from_values(h.getSolution().col_value, problem.n)
            else:
                status, message = Status.ERROR, f"HiGHS stopped ({h.modelStatusToString(ms)}) before finding a solution"
        elif status is Status.ERROR:
            message = f"HiGHS: {h.modelStatusToString(ms)}"
        bound = float(info.mip_dual_bound) if status.has_solution else None
        return problem.make_solution(chosen, status, solver=self.name, seconds=time.perf_counter() - t0,
                                     bound=bound, message=message,
                                     info={"nodes": int(info.mip_node_count)})
