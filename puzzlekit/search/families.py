"""Seeded families of search problems that no block library of NVIDIA's shape produces.

Used by ``benchmarks/solvers.py`` (time per family against HiGHS and python-mip/CBC) and by the
cross-check in the test suite (every family against brute force or a second backend).  Each
generator takes a seed and a size and returns a :class:`~puzzlekit.search.Problem`:

* ``independent``: every (layer, candidate) has its own uniform costs; the score falls as the
  costs rise (a multi-dimensional knapsack over layers);
* ``shared``: a block library's shape: variants whose costs are equal across layers (profiled per
  variant), per-layer sensitivities of the score;
* ``noisy``: the shared costs times per-layer log-normal noise (measured runtimes, a heterogeneous
  parent): no two layers cost the same, the hard case of the issue this module came from;
* ``lower``: upper budgets and a lower bound on a parameter-like cost (``num_params >= X``);
* ``spans``: spanning candidates (one block replacing two or three layers) beside per-layer ones;
* ``tight``: budgets just above what the cheapest covers reach (few feasible architectures);
* ``infeasible``: budgets each reachable alone but not together (or, sometimes, one below its least
  value);
* ``maximize``: a score to maximise (e.g. an accuracy) under budgets.

Budgets: 1 to 4 rows (``budgets`` argument, default drawn from the seed).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .presolve import least_values
from .problem import Problem

__all__ = ["FAMILIES", "family_problem", "family_instances"]

_NAMES = ("memory_mib", "runtime_ms", "num_params", "energy_j")


def _budgets(r: np.random.Generator, costs: np.ndarray, L: int, lo: float, hi: float) -> np.ndarray:
    """Upper budgets as fractions (drawn in ``[lo, hi]``) of the all-average architecture's totals."""
    return costs.mean(axis=0) * L * r.uniform(lo, hi, costs.shape[1])


def _layout(L: int, k: int, spans: bool, r: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    first = list(np.repeat(np.arange(L), k))
    last = list(first)
    if spans:
        for i in range(L - 1):
            for _ in range(int(r.integers(1, 4))):
                w = int(r.integers(2, 4))
                if i + w - 1 < L:
                    first.append(i)
                    last.append(i + w - 1)
    return np.array(first), np.array(last)


def _score_from_costs(r: np.random.Generator, costs: np.ndarray, span: np.ndarray, sens: np.ndarray) -> np.ndarray:
    """A damage that falls as a candidate's (normalised) costs rise, with noise; ``sens`` per candidate."""
    z = costs / (costs.mean(axis=0) + 1e-12)
    size = z.mean(axis=1) / span
    return sens * np.exp(-2.0 * size) * r.lognormal(0.0, 0.3, costs.shape[0]) * span


def _independent(seed: int, L: int, k: int, m: int, spans: bool = False) -> Problem:
    r = np.random.default_rng(seed)
    first, last = _layout(L, k, spans, r)
    span = (last - first + 1).astype(float)
    costs = r.uniform(1.0, 100.0, (first.size, m)) * span[:, None] * r.uniform(0.6, 1.0, (first.size, 1))
    obj = _score_from_costs(r, costs, span, r.lognormal(0, 0.5, L)[first])
    return Problem(L, first, last, obj, costs, _NAMES[:m], upper=_budgets(r, costs, L, 0.55, 0.95),
                   objective_name="kl_div", meta={"family": "independent", "seed": seed})


def _variants(r: np.random.Generator, k: int, m: int) -> np.ndarray:
    """``k`` block variants' costs: attention x FFN-like sizes, correlated but not proportional."""
    a = r.uniform(0.0, 1.0, k)
    f = r.uniform(0.0, 1.0, k)
    base = [a * 40 + f * 60 + 1, a * 70 + f * 30 + 2, a * 20 + f * 80, (a + f) * 50 + r.uniform(0, 5, k)]
    return np.column_stack(base[:m])


def _shared(seed: int, L: int, k: int, m: int, spans: bool = False, noise: float = 0.0) -> Problem:
    r = np.random.default_rng(seed)
    V = _variants(r, k, m)
    first, last = _layout(L, k, spans, r)
    span = (last - first + 1).astype(float)
    vid = r.integers(0, k, first.size)  # spanning candidates: a random variant
    vid[: L * k] = np.tile(np.arange(k), L)  # per-layer candidates: every variant once
    costs = V[vid] * span[:, None]
    if noise:
        costs = costs * r.lognormal(0.0, noise, costs.shape)
    depth = np.linspace(-1, 1, L)
    sens = (0.4 + 1.2 * depth**4) * r.lognormal(0.0, 0.5, L)
    z = V[vid] / V.mean(axis=0)
    obj = sens[first] * np.exp(-2.0 * z.mean(axis=1)) * r.lognormal(0.0, 0.1, first.size) * span
    return Problem(L, first, last, obj, costs, _NAMES[:m], upper=_budgets(r, costs, L, 0.5, 0.9),
                   objective_name="kl_div", meta={"family": "noisy" if noise else "shared", "seed": seed})


def _with_lower(p: Problem, seed: int) -> Problem:
    """A lower bound on the last cost (``num_params >= X``) at a point of its reachable range."""
    r = np.random.default_rng(seed + 17)
    lo, hi = least_values(p)[p.cost_names[-1]]
    x = lo + (hi - lo) * r.uniform(0.35, 0.6)
    up = float(p.upper[-1])
    return p.with_budgets({p.cost_names[-1]: (min(x, up), up if up > x else None)})


def _cover_totals(p: Problem, limit: int = 50_000) -> np.ndarray | None:
    """Every exact cover's cost totals (one row per cover), or None when there are more than ``limit``."""
    L = p.num_layers
    by_first = [np.flatnonzero(p.first == i) for i in range(L)]
    count = np.zeros(L + 1)
    count[L] = 1
    for i in range(L - 1, -1, -1):
        count[i] = sum(count[int(p.last[j]) + 1] for j in by_first[i])
    if count[0] > limit:
        return None
    tails: list[np.ndarray | None] = [None] * (L + 1)
    tails[L] = np.zeros((1, p.costs.shape[1]))
    for i in range(L - 1, -1, -1):
        tails[i] = np.vstack([p.costs[j] + tails[int(p.last[j]) + 1] for j in by_first[i]])
    return tails[0] + p.constants


def _feasible(q: Problem, integer: bool, totals: np.ndarray | None, time_limit: float = 2.0) -> bool | None:
    """Whether ``q`` has a cover meeting its budgets: its LP relaxation (``integer=False``) or itself (from
    ``totals`` when given, else HiGHS: None when HiGHS did not decide within ``time_limit`` seconds)."""
    from dataclasses import replace

    from .presolve import LPInfeasible, _lp_duals

    if integer and totals is not None:
        ok = np.all((totals <= q.upper * (1 + 1e-12) + 1e-12) & (totals >= q.lower * (1 - 1e-12) - 1e-12), axis=1)
        return bool(ok.any())
    G, h = q.le_rows()
    if not integer:
        try:
            _lp_duals(q, G, h)
        except LPInfeasible:
            return False
        return True
    from ..solvers.base import SolveOptions
    from ..solvers.highs import solve_highs
    from .solution import Status

    zero = replace(q, objective=np.zeros(q.n))  # any feasible cover is optimal: a feasibility problem
    st = solve_highs(zero, SolveOptions(time_limit=time_limit)).status
    return True if st.has_solution else (False if st is Status.INFEASIBLE else None)


def _tight(p: Problem, seed: int, infeasible: bool) -> Problem:
    """Budgets moved, together, to where few covers fit: all at the same fraction ``f`` of their reachable
    ranges (the last one as a lower bound).  ``f`` is found by bisection between the LP relaxation's threshold and the integer one:
    ``infeasible`` instances sit between the two (each budget is reachable alone and the LP relaxation is
    feasible, so only a search proves that nothing fits: the programme's hard case, with no incumbent to
    prune by), near-infeasible ones just above the integer threshold."""
    r = np.random.default_rng(seed + 29)
    least = least_values(p)
    names = [p.cost_names[i] for i in p.budget_rows]
    if infeasible and r.random() < 0.15:  # one budget below its least value: the easy proof
        n = names[int(r.integers(len(names)))]
        return p.with_budgets({n: least[n][0] - 1e-3 * max(1.0, abs(least[n][1] - least[n][0]))})

    # upper budgets only: with costs drawn independently per candidate, no cover is the cheapest on every
    # cost at once, so at f = 0 nothing fits and at f = 1 everything does
    low = None

    def at(f: float) -> Problem:
        b: dict = {n: least[n][0] + f * (least[n][1] - least[n][0]) for n in names if n != low}
        if low is not None:
            b[low] = (least[low][1] - f * (least[low][1] - least[low][0]), None)
        return p.with_budgets(b)

    def bisect(ok, lo: float, hi: float, iters: int) -> float:  # ok(hi) true, ok(lo) false (None: undecided)
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if ok(mid) else (mid, hi)  # undecided counts as infeasible: stays decidable
        return hi

    totals = _cover_totals(p)
    f_int = bisect(lambda f: _feasible(at(f), True, totals), 0.0, 1.0, 12)
    if not infeasible:
        return at(min(1.0, f_int * (1.0 + r.uniform(0.0, 0.02)) + 1e-6))
    f_lp = bisect(lambda f: _feasible(at(f), False, totals), 0.0, f_int, 12)
    for u in (r.uniform(0.3, 0.9), 0.2, 0.1):  # between the two thresholds, where HiGHS proves it quickly
        q = at(f_lp + u * (f_int - f_lp))
        if _feasible(q, True, totals) is False:
            return q
    return at(0.99 * f_lp)  # the LP relaxation's proof


def _family(name: str) -> Callable[..., Problem]:
    def make(seed: int, L: int = 30, k: int = 24, m: int | None = None) -> Problem:
        r = np.random.default_rng([seed, sum(map(ord, name))])
        mm = int(r.integers(1, 5)) if m is None else m
        if name == "independent":
            return _independent(seed, L, k, mm)
        if name == "shared":
            return _shared(seed, L, k, mm)
        if name == "noisy":
            return _shared(seed, L, k, mm, noise=0.15)
        if name == "lower":
            return _with_lower(_shared(seed, L, k, max(mm, 2), noise=0.1), seed)
        if name == "spans":
            return _shared(seed, L, k, mm, spans=True, noise=0.1)
        if name == "tight":
            return _tight(_independent(seed, L, k, max(mm, 2)), seed, infeasible=False)
        if name == "infeasible":
            return _tight(_independent(seed, L, k, max(mm, 2)), seed, infeasible=True)
        if name == "maximize":
            from dataclasses import replace

            p = _shared(seed, L, k, mm, noise=0.1)
            return replace(p, objective=1.0 - p.objective / p.objective.max(), maximize=True,
                           objective_name="accuracy")
        raise KeyError(name)

    make.__name__ = name
    return make


#: family name -> ``make(seed, L=30, k=24, m=None)``
FAMILIES: dict[str, Callable[..., Problem]] = {n: _family(n) for n in (
    "independent", "shared", "noisy", "lower", "spans", "tight", "infeasible", "maximize")}


def family_problem(name: str, seed: int, L: int = 30, k: int = 24, m: int | None = None) -> Problem:
    """One seeded instance of family ``name`` (``L`` layers, ``k`` candidates per layer, ``m`` budgets)."""
    return FAMILIES[name](seed, L, k, m)


def family_instances(count: int, L: int = 30, k: int = 24, seed: int = 0) -> list[tuple[str, Problem]]:
    """``count`` instances cycling over the families (budgets 1-4 drawn per instance)."""
    names = list(FAMILIES)
    return [(names[i % len(names)], FAMILIES[names[i % len(names)]](seed + i, L, k)) for i in range(count)]
