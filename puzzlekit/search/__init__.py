"""MIP search over a block library: one candidate per layer under budgets.

``search`` (one optimum), ``search_diverse`` (diverse top-k), ``sweep``
(the optimum along one budget) and ``pareto_front`` (the exact frontier of the
objective against one cost).  Problems live in plain arrays
(:class:`Problem`); solvers are pluggable (``puzzlekit.solvers``); every
answer is a verified :class:`Solution` with our own :class:`Status`.
"""

from __future__ import annotations

from .api import (
    SweepResult,
    build_problem,
    library_constants,
    pareto_front,
    search,
    search_diverse,
    solve_problem,
    sweep,
)
from .constraints import (
    Forbid,
    KeepAttention,
    LatencyLimit,
    MemoryLimit,
    ParamsLimit,
    ThroughputTarget,
    TTFTLimit,
    parse_budget,
    translate,
)
from .problem import Cut, Problem
from .solution import Choice, Solution, Status

__all__ = [
    "search", "search_diverse", "sweep", "pareto_front", "solve_problem", "build_problem", "SweepResult",
    "library_constants",
    "Problem", "Cut", "Solution", "Choice", "Status",
    "MemoryLimit", "ThroughputTarget", "LatencyLimit", "TTFTLimit", "ParamsLimit", "KeepAttention", "Forbid",
    "parse_budget", "translate",
]
