"""``puzzlekit-exact``: the specialised exact solver (the default backend), falling back to HiGHS.

It runs :func:`puzzlekit.search.exact.solve_exact` (a Lagrangian-pruned
dynamic programme over layer positions; every answer it gives is a proven
optimum of the float problem, budgets met to 1e-9 relative).  When the
programme gives up (more than ``max_states`` states, or its share of the time
limit is spent) the problem goes to HiGHS with the programme's incumbent as a
warm start, and the returned :class:`~puzzlekit.search.Solution` names
``highs`` as its solver (``info["fallback"]`` says why).  ``extra`` options:
``max_states`` (default 3,000,000), ``beam`` (default 300).
"""

from __future__ import annotations

import time
from typing import Any

from .base import Backend, SolveOptions

__all__ = ["ExactBackend"]


class ExactBackend(Backend):
    """Lagrangian-pruned exact dynamic programme; HiGHS when it gives up."""

    name = "puzzlekit-exact"
    required_modules = ("highspy",)  # LP multipliers and the fallback
    capabilities = frozenset({"time_limit", "warm_start", "float_exact", "bound"})
    install_hint = "pip install highspy"
    description = "exact DP with Lagrangian bounds (default); falls back to HiGHS on hard instances"

    def solve(self, problem: Any, options: SolveOptions) -> Any:
        from dataclasses import replace

        from puzzlekit.search.exact import solve_exact
        from puzzlekit.search.solution import Status

        from .highs import HighsBackend

        t0 = time.perf_counter()
        extra = dict(options.extra)
        max_states = int(extra.pop("max_states", 3_000_000))
        beam = int(extra.pop("beam", 300))
        share = None if options.time_limit is None else 0.5 * options.time_limit
        if options.mip_gap == 0.0:
            r = solve_exact(problem, incumbent=options.warm_start, beam=beam, max_states=max_states,
                            time_limit=share, lower_bound=options.hints.get("lower_bound"),
                            lp_duals=options.hints.get("lp_duals"))
            info = {"states": r.states, "exact_seconds": r.seconds, **{f"exact_{k}": v for k, v in r.info.items()}}
            if r.status == "optimal":
                return problem.make_solution(r.chosen, Status.OPTIMAL, solver=self.name,
                                             seconds=time.perf_counter() - t0, bound=r.value, info=info)
            if r.status == "infeasible":
                return problem.make_solution(None, Status.INFEASIBLE, solver=self.name,
                                             seconds=time.perf_counter() - t0, info=info)
            info["fallback"] = f"puzzlekit-exact gave up ({r.info.get('reason', '')}); handed to HiGHS"
            warm = r.incumbent if r.incumbent is not None else options.warm_start
        else:
            info = {"fallback": "a nonzero mip_gap was asked: handed to HiGHS"}
            warm = options.warm_start
        left = None
        if options.time_limit is not None:
            left = max(1e-3, options.time_limit - (time.perf_counter() - t0))
        sol = HighsBackend().solve(problem, replace(options, time_limit=left, warm_start=warm, extra=extra))
        sol.info.update(info)
        sol.solve_seconds = time.perf_counter() - t0
        return sol
