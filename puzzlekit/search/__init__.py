"""MIP search over a block library: one candidate per layer under budgets.

``search`` (one optimum), ``search_diverse`` (diverse top-k), ``sweep``
(the optimum along one budget), ``pareto_front`` (the exact frontier of the
objective against one cost) and ``search_at_fit`` / ``max_throughput_at_fit``
(throughput at the batch that fits the device's memory, the batch searched too).  Problems live in plain arrays
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
from .at_fit import AtFit, FitSolution, max_throughput_at_fit, search_at_fit
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
from .deploy import DEFAULT_BATCHES, ArchitectureFit, Deployment, parse_fit_spec, throughput_at_fit
from .problem import Cut, Problem
from .solution import Choice, Solution, Status

__all__ = [
    "search", "search_diverse", "sweep", "pareto_front", "solve_problem", "build_problem", "SweepResult",
    "library_constants",
    "Problem", "Cut", "Solution", "Choice", "Status",
    "MemoryLimit", "ThroughputTarget", "LatencyLimit", "TTFTLimit", "ParamsLimit", "KeepAttention", "Forbid",
    "parse_budget", "translate",
    "search_at_fit", "max_throughput_at_fit", "throughput_at_fit", "AtFit", "Deployment", "FitSolution",
    "ArchitectureFit", "parse_fit_spec", "DEFAULT_BATCHES",
]
