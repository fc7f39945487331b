"""The exact Pareto front of the objective against one cost under further budgets (the multi-budget path
of :func:`~puzzlekit.search.pareto_front`).

Each point is the optimum at a budget just below the previous point's cost, as a loop of single solves
would give; what makes it fast is what the points share:

* dominance is decided once (it depends on the cost coefficients, not on the budgets);
* the LP multipliers of the first point serve every later one (any non-negative multipliers give valid
  bounds; they only affect speed);
* the resource tables of the exact programme are built once, for the largest budget, and reused
  (:func:`~puzzlekit.search.exact.solve_exact`'s ``cache``);
* the previous point's objective bounds the next one from below (a tighter budget never helps), so
  each proof starts next to the answer, at targets a step above it (the last step between points) before
  any beam search;
* no racing thread and no presolve per point.

A point the programme gives up on is solved by the backend (``solver``, default HiGHS) instead.
"""

from __future__ import annotations

import math
import time
from typing import Any

from .exact import solve_exact
from .presolve import LPInfeasible, _lp_duals, dominance_mask
from .problem import Problem
from .solution import Solution, Status

__all__ = ["multi_budget_front"]


def multi_budget_front(problem: Problem, cost: str, *, low: float | None = None, max_points: int = 100_000,
                       solver: str | None = None, progress: Any = None) -> list[Solution]:
    """The front of ``problem``'s objective against ``cost`` from its current upper budget down to ``low``.

    Points are optima at budgets strictly below the previous point's cost by ``max(1e-6, 2e-9·|cost|)``
    (costs closer than that merge); returned in decreasing cost, one per distinct objective.
    """
    from .api import solve_problem

    i = problem.cost_names.index(cost)
    G, h = problem.le_rows()
    keep = dominance_mask(problem, G)
    sub = problem.subset(keep)
    try:
        lam = _lp_duals(sub, *sub.le_rows()) if G.shape[0] > 1 else None
    except LPInfeasible:
        return []
    cache: dict = {}
    front: list[Solution] = []
    cur = sub
    lower = step = None
    prev_cost = None
    for _ in range(max_points):
        t1 = time.perf_counter()
        r = solve_exact(cur, lower_bound=lower, lp_duals=lam, cache=cache, step=step)
        if r.status == "infeasible":
            break
        if r.status == "optimal":
            s = problem.make_solution(problem.origin_to_local(cur.origin[r.chosen]), Status.OPTIMAL,
                                      solver="puzzlekit-exact", seconds=time.perf_counter() - t1, bound=r.value,
                                      info={"states": r.states})
        else:  # the programme gave up: the backend, on the original candidates
            q = problem.with_budgets({cost: (problem.lower[i], float(cur.upper[i]))})
            s = solve_problem(q, solver or "highs")
            if not s.status.has_solution:
                break
        if front and abs(front[-1].objective - s.objective) <= 1e-12 * max(1.0, abs(s.objective)):
            front[-1] = s
        else:
            front.append(s)
        if progress is not None:
            progress(len(front), None)
        c = s.costs[cost]
        if prev_cost is not None and c >= prev_cost:
            break
        prev_cost = c
        if low is not None and c <= low:
            break
        v = -s.objective if problem.maximize else s.objective
        # the next optimum is expected about as far above this one as this one is above the last
        step = None if lower is None else max(v - lower, 1e-9 * max(1.0, abs(v)))
        lower = v
        nxt = c - max(1e-6, 2e-9 * abs(c))
        if math.isfinite(problem.lower[i]) and nxt < problem.lower[i]:
            break
        cur = cur.with_budgets({cost: (None if not math.isfinite(problem.lower[i]) else problem.lower[i], nxt)})
    return front
