"""HiGHS through highspy's matrix API (the fallback of the default ``puzzlekit-exact``).

The model is passed in one call (``passModel`` with a column-wise matrix), so
building it costs little more than copying the problem's arrays.  HiGHS'
default relative gap (1e-4) is replaced by ``SolveOptions.mip_gap`` (0: a
proven optimum) and its absolute gap (1e-6) by 1e-9, so an optimum is proven
to 1e-9 in objective (what answers "equal to 1e-6" need); its MIP feasibility
tolerance is 1e-9 (see :data:`FEAS_TOL`), and an answer that still fails the
float re-check is repaired (:func:`solve_highs`).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from .base import Backend, SolveOptions, chosen_from_values

__all__ = ["HighsBackend", "load_into", "new_highs", "solve_highs"]

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
        return solve_highs(problem, options, solver=self.name)


#: HiGHS' MIP feasibility tolerance.  Its default (1e-6) applies to *scaled* rows, so an answer could
#: exceed a budget of ~8e4 by ~2e-4 (2e-9 relative) and fail the 1e-9 float re-check
#: (``Problem.violations``); at 1e-9 it meets the re-check's tolerance.
FEAS_TOL = 1e-9
_REPAIRS = 3


def _run_once(problem: Any, options: SolveOptions, stop: Any, rows: tuple | None) -> tuple:
    """One HiGHS run (``rows``: side-row ``(lower, upper)`` bounds to use instead of the problem's); returns
    ``(model status name, status, chosen, dual bound, nodes)``."""
    import highspy

    from puzzlekit.search.solution import Status

    h = new_highs()
    h.setOptionValue("output_flag", bool(options.verbose))
    h.setOptionValue("mip_rel_gap", float(options.mip_gap))
    h.setOptionValue("mip_abs_gap", 1e-9)  # the default 1e-6 could stop short of "equal to 1e-6"
    h.setOptionValue("mip_feasibility_tolerance", FEAS_TOL)
    if options.time_limit is not None:
        h.setOptionValue("time_limit", max(1e-3, float(options.time_limit)))
    for k, v in options.extra.items():
        h.setOptionValue(k, v)
    load_into(h, problem)
    if rows is not None:
        L = problem.num_layers
        for r, (lo, up) in enumerate(zip(*rows)):
            h.changeRowBounds(L + r, float(lo), float(up))
    if options.warm_start is not None:
        x = np.zeros(problem.n)
        x[np.asarray(options.warm_start, dtype=np.int64)] = 1.0
        sol = highspy.HighsSolution()
        sol.col_value = x
        sol.value_valid = True
        h.setSolution(sol)
    if stop is not None:  # a race: poll the event from HiGHS' interrupt callbacks
        def interrupt(e: Any) -> None:
            if stop.is_set():
                e.interrupt()

        h.cbMipInterrupt += interrupt  # (polled a few times a second; the LP ones far more often, each
        # taking the GIL from the racing thread: they slowed HiGHS several times over)
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
    chosen = chosen_from_values(h.getSolution().col_value, problem.n) if status.has_solution and has_sol else None
    bound = float(info.mip_dual_bound) if status.has_solution else None
    return h.modelStatusToString(ms), status, chosen, bound, int(info.mip_node_count)


def solve_highs(problem: Any, options: SolveOptions, *, solver: str = "highs", stop: Any = None) -> Any:
    """Solve ``problem`` with HiGHS; a verified Solution.

    ``stop`` (an object with ``is_set()``) interrupts the run when set (the answer is then ``FEASIBLE``
    with HiGHS' incumbent, or ``ERROR`` without one).  An answer that HiGHS accepted within its own
    tolerance but that fails the float re-check is repaired: the budgets it exceeds are tightened by the
    excess and HiGHS runs again from it (up to three times).  The first run's dual bound still bounds the
    original problem, so the repaired answer is ``OPTIMAL`` when it reaches that bound, else ``FEASIBLE``
    with its gap.  Nothing raises for a problem that has a feasible answer.
    """
    from dataclasses import replace

    from puzzlekit.search.solution import Status

    t0 = time.perf_counter()
    name, status, chosen, bound, nodes = _run_once(problem, options, stop, None)
    info: dict[str, Any] = {"nodes": nodes}
    message = ""
    G, lo, hi, _ = problem.side_rows()
    rows = None
    first_bound = bound
    for k in range(_REPAIRS):
        if chosen is None or not problem.violations(chosen):
            break
        act = G[:, chosen].sum(axis=1)
        rows = (lo.copy(), hi.copy()) if rows is None else rows
        for b, sign in ((rows[1], 1.0), (rows[0], -1.0)):  # tighten each bound HiGHS let pass by twice the excess
            over = sign * (act - b) > 0
            b[over] -= sign * (2.0 * np.abs(act[over] - b[over]) + 1e-12 * np.maximum(1.0, np.abs(b[over])))
        left = None if options.time_limit is None else options.time_limit - (time.perf_counter() - t0)
        if left is not None and left <= 0:
            chosen = None
            break
        name, status, chosen, bound, n2 = _run_once(problem, replace(options, time_limit=left, warm_start=None),
                                                    stop, rows)
        info["nodes"] += n2
        info["repaired"] = k + 1
    if rows is not None and (chosen is None or problem.violations(chosen)) and not (stop is not None and stop.is_set()):
        # the repairs did not converge (or the tightened rows cut off every answer): the exact programme
        # meets the budgets to the re-check's tolerance itself
        from puzzlekit.search.exact import solve_exact

        left = None if options.time_limit is None else max(1e-3, options.time_limit - (time.perf_counter() - t0))
        r = solve_exact(problem, time_limit=left)
        info["repaired_by"] = "puzzlekit-exact"
        name, chosen = f"exact programme: {r.status}", r.chosen if r.chosen is not None else r.incumbent
        status = {"optimal": Status.OPTIMAL, "infeasible": Status.INFEASIBLE}.get(r.status, Status.FEASIBLE)
        bound = r.value if r.status == "optimal" else r.lower_bound
        first_bound = None if r.status != "optimal" else bound
    if chosen is not None and problem.violations(chosen):
        chosen = None
    if chosen is not None and rows is not None:  # the first run's bound holds for the original problem
        v = float(problem.c[chosen].sum())
        if first_bound is not None and math.isfinite(first_bound):
            bound = min(first_bound, v)
        if status is Status.OPTIMAL and not (first_bound is not None
                                             and v <= first_bound + 1e-9 * max(1.0, abs(first_bound))):
            status = Status.FEASIBLE
    if status.has_solution and chosen is None:
        status = Status.ERROR
        message = f"HiGHS stopped ({name}) before finding a solution that passes the float re-check"
    elif status is Status.ERROR:
        message = f"HiGHS: {name}"
    return problem.make_solution(chosen, status, solver=solver, seconds=time.perf_counter() - t0,
                                 bound=bound if status.has_solution else None, message=message, info=info)
