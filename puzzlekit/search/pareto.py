"""The exact Pareto front of the objective against one cost under further budgets (the multi-budget path
of :func:`~puzzlekit.search.pareto_front`).

The result is what a loop of single solves gives (each point the optimum at a budget just below the
previous point's cost), computed by windows instead of points:

* for a window of the cost, ``[lo, hi]``, the optimum at ``lo`` (one exact solve) bounds every point
  of the window: a larger budget never makes the optimum worse;
* one pass of the exact programme at budget ``hi`` keeps every partial architecture that can still
  reach that bound (the pruning by the other budgets, the Lagrangian bounds and dominance all stay
  valid), so its final states hold every point of the window's front; they are read off in order;
* the window adapts: it doubles while a pass stays small and shrinks when one would pass its state
  cap; a window that cannot shrink further is walked point by point (one solve per point, each proof
  starting a step above the previous point's objective);
* dominance is decided once and the first point's LP multipliers serve every solve (any non-negative
  multipliers give valid bounds).

Points the programme gives up on are solved by the backend (``solver``, default HiGHS).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from .exact import solve_exact, trace
from .presolve import LPInfeasible, _lp_duals, dominance_mask, least_values
from .problem import Problem
from .solution import Solution, Status

__all__ = ["multi_budget_front"]

_WINDOW_STATES = 400_000  # state cap of one window's pass


def _eps(c: float) -> float:
    return max(1e-6, 2e-9 * abs(c))


def multi_budget_front(problem: Problem, cost: str, *, low: float | None = None, max_points: int = 100_000,
                       solver: str | None = None, progress: Any = None) -> list[Solution]:
    """The front of ``problem``'s objective against ``cost`` from its current upper budget down to ``low``.

    Points are optima at budgets strictly below the previous point's cost by ``max(1e-6, 2e-9·|cost|)``
    (costs closer than that merge); returned in decreasing cost, one per distinct objective.
    """
    from .api import solve_problem

    i = problem.cost_names.index(cost)
    G, _ = problem.le_rows()
    sub = problem.subset(dominance_mask(problem, G))
    try:
        lam = _lp_duals(sub, *sub.le_rows()) if G.shape[0] > 1 else None
    except LPInfeasible:
        return []
    lo_i = problem.lower[i] if math.isfinite(problem.lower[i]) else None
    floor = least_values(sub)[cost][0] if low is None else low
    front: list[Solution] = []
    cache: dict = {}  # the resource tables, built for the first (largest) budget, serve every window

    def at(b: float) -> Problem:
        return sub.with_budgets({cost: (lo_i, b)})

    def add(s: Solution) -> bool:
        """Append a point (merging equal objectives); False when the walk must stop."""
        if front and abs(front[-1].objective - s.objective) <= 1e-12 * max(1.0, abs(s.objective)):
            front[-1] = s
        else:
            front.append(s)
        if progress is not None:
            progress(len(front), None)
        c = s.costs[cost]
        return len(front) < max_points and not (low is not None and c <= low)

    def single(b: float, lower: float | None, step: float | None) -> Solution | None:
        t1 = time.perf_counter()
        q = at(b)
        r = solve_exact(q, lower_bound=lower, lp_duals=lam, step=step)
        if r.status == "infeasible":
            return None
        if r.status == "optimal":
            return problem.make_solution(problem.origin_to_local(q.origin[r.chosen]), Status.OPTIMAL,
                                         solver="puzzlekit-exact", seconds=time.perf_counter() - t1, bound=r.value)
        s = solve_problem(problem.with_budgets({cost: (lo_i, b)}), solver or "highs")
        return s if s.status.has_solution else None

    b = float(sub.upper[i])
    width = max((b - floor) / 8.0, _eps(b))
    lower = step = None
    while b >= (lo_i if lo_i is not None else -math.inf):
        seg_lo = b - width
        if width > 4 * _eps(b) and seg_lo > floor - width:
            t1 = time.perf_counter()
            s_lo = single(max(seg_lo, floor), lower, None)
            T = None if s_lo is None else (-s_lo.objective if problem.maximize else s_lo.objective)
            q = at(b)
            r = solve_exact(q, lp_duals=lam, max_states=_WINDOW_STATES, cache=cache,
                            collect_below=(T + 1e-9 * (1.0 + abs(T))) if T is not None else math.inf)
            if r.status == "collected" and r.info.get("final") is not None:
                U, Ob, back = r.info["final"]
                pts = _read_front(q, U, Ob, i)
                share = (time.perf_counter() - t1) / max(1, len(pts))
                stop = False
                bb = b
                for c_tot, v, idx in pts:  # decreasing cost; the optimum at budget bb is the first with cost <= bb
                    if c_tot > bb + 1e-9 * max(1.0, abs(bb)):
                        continue
                    chosen = trace(q, back, idx)
                    s = problem.make_solution(problem.origin_to_local(q.origin[chosen]), Status.OPTIMAL,
                                              solver="puzzlekit-exact", seconds=share, bound=v)
                    if not add(s):
                        stop = True
                        break
                    bb = s.costs[cost] - _eps(s.costs[cost])
                    if s_lo is not None and s.costs[cost] <= s_lo.costs[cost] + 1e-9:
                        break
                if stop or s_lo is None:
                    break
                lower = -front[-1].objective if problem.maximize else front[-1].objective
                b = front[-1].costs[cost] - _eps(front[-1].costs[cost])
                if r.states < _WINDOW_STATES // 8:
                    width *= 2.0
                continue
            width /= 4.0  # the pass would be too large: a narrower window
            continue
        # point by point
        s = single(b, lower, step)
        if s is None or not add(s):
            break
        v = -s.objective if problem.maximize else s.objective
        step = None if lower is None else max(v - lower, 1e-9 * max(1.0, abs(v)))
        lower = v
        b = s.costs[cost] - _eps(s.costs[cost])
    return front


def _read_front(q: Problem, U: np.ndarray, Ob: np.ndarray, i: int) -> list[tuple[float, float, int]]:
    """``(cost total, objective, state)`` of the final states on the front of cost ``i`` against the
    objective (minimisation form), in decreasing cost."""
    G, _ = q.le_rows()
    r = next(k for k in range(G.shape[0]) if np.array_equal(G[k], q.costs[:, i]))  # the cost's upper row
    cost_tot = U[:, r] + q.constants[i]
    order = np.lexsort((Ob, cost_tot))  # increasing cost, then objective
    out, best = [], math.inf
    for k in order:
        if not math.isfinite(best) or Ob[k] < best - 1e-12 * max(1.0, abs(best)):
            out.append((float(cost_tot[k]), float(Ob[k]), int(k)))
            best = float(Ob[k])
    return out[::-1]
