"""The search front end: ``search``, ``search_diverse``, ``sweep``, ``pareto_front``.

Each call builds a :class:`Problem`, reduces it exactly (:mod:`.presolve`),
hands the reduced problem to a backend (``puzzlekit.solvers``), maps the
answer back and re-verifies it against the original float problem.
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..errors import ConfigError, InfeasibleError, SolverError
from .constraints import parse_bound, translate
from .presolve import (
    Paths,
    _improve,
    dominance_mask,
    dp_front,
    dp_one_budget,
    lagrangian_1d,
    least_values,
    presolve,
)
from .problem import Problem
from .solution import Solution, Status

__all__ = ["build_problem", "search", "search_diverse", "solve_problem", "sweep", "pareto_front",
           "SweepResult", "infeasible_error", "library_constants"]

DP_SOLVER = "puzzlekit-dp"
#: from this many points on, a one-budget sweep is answered by a single programme over the whole range (its
#: final states are the frontier); fewer points get one pruned programme each (measured on NVIDIA's library:
#: 100 points 0.54 s vs 0.83 s CPU; segments of 4-16 points were slower than either)
_SWEEP_ONE_PROGRAMME = 16


def build_problem(
    source: Any,
    objective: str | None = None,
    budgets: Mapping[str, Any] | None = None,
    *,
    maximize: bool = False,
    scenario: Any = None,
    constraints: Iterable[Any] = (),
    constants: Mapping[str, float] | None = None,
    engine: str | None = None,
) -> Problem:
    """A :class:`Problem` from a library (or a Problem, whose budgets are then updated).

    ``constants`` (non-block costs added to every architecture's totals): ``None`` (default) takes the
    library's own record for the scenario (``lib.non_block_costs_for(scenario)``, written by
    ``profile_library``), for every cost the blocks have; a mapping replaces that record (``{}``: block
    costs alone).  A constant for a cost without a budget makes the solution report that cost's total.

    ``engine`` (``"vllm"``, ``"llamacpp"``, ...) keeps only candidates that serving engine serves
    (:class:`puzzlekit.engines.EngineConstraint`).
    """
    if engine is not None and not isinstance(source, Problem):
        from ..engines import EngineConstraint, get_engine

        constraints = [*constraints, EngineConstraint(get_engine(engine).name)]
    if isinstance(source, Problem):
        p = source.with_budgets(budgets) if budgets else source
        if maximize != p.maximize and maximize:
            p = replace(p, maximize=True)
        if constants is not None:
            unknown = sorted(set(constants) - set(p.cost_names))
            if unknown:
                raise ConfigError(f"constants given for {unknown}, which are not costs of this problem; "
                                  f"its costs: {list(p.cost_names)}")
            p = replace(p, constants=np.array([float(constants.get(n, 0.0)) for n in p.cost_names]))
        return p
    if isinstance(source, (str, os.PathLike)):
        from ..library import BlockLibrary

        source = BlockLibrary.load(source)
    if objective is None:
        raise ConfigError("search: name the objective metric (e.g. objective='kl_div')")
    tr = translate(source, constraints, scenario)
    all_budgets: dict[str, Any] = dict(tr.budgets)
    for k, v in (budgets or {}).items():
        lo, hi = parse_bound(v, k)
        if k in all_budgets:
            lo0, hi0 = all_budgets[k]
            lo, hi = max(lo, lo0), min(hi, hi0)
        all_budgets[k] = (lo, hi)
    if constants is None:
        consts = library_constants(source, scenario, skip=tr.extra_costs)
        consts.update(tr.constants)
    else:
        consts = dict(tr.constants)
        consts.update(constants)
    p = Problem.from_library(source, objective, all_budgets, maximize=maximize, scenario=scenario,
                             constants=consts, extra_costs=tr.extra_costs, allowed=tr.allowed)
    if engine is not None:
        p.meta["engine"] = engine
    return p


def library_constants(library: Any, scenario: Any = None, *, skip: Iterable[str] = ()) -> dict[str, float]:
    """The library's non-block costs under ``scenario`` for the costs its blocks have (``{}`` when it records none).

    What :func:`search` and the others add to every architecture when no ``constants=`` are given."""
    get = getattr(library, "non_block_costs_for", None)
    rec = get(scenario) if get is not None else {}
    if not rec:
        return {}
    have = set(library.cost_names_for(scenario))
    return {k: v for k, v in rec.items() if k in have and k not in set(skip)}


def infeasible_error(problem: Problem) -> InfeasibleError:
    """The error for an infeasible problem: each budget and the least (or greatest) value it could reach."""
    reach = least_values(problem)
    parts, least = [], {}
    for i in problem.budget_rows:
        name = problem.cost_names[i]
        lo_r, hi_r = reach[name]
        if math.isfinite(problem.upper[i]):
            least[name] = lo_r
            ok = "reachable" if lo_r <= problem.upper[i] * (1 + 1e-12) + 1e-12 else "UNREACHABLE"
            parts.append(f"{name} <= {problem.upper[i]:.10g} (least reachable {lo_r:.10g}: {ok} alone)")
        if math.isfinite(problem.lower[i]):
            least.setdefault(name, lo_r)
            ok = "reachable" if hi_r >= problem.lower[i] * (1 - 1e-12) - 1e-12 else "UNREACHABLE"
            parts.append(f"{name} >= {problem.lower[i]:.10g} (greatest reachable {hi_r:.10g}: {ok} alone)")
    extra = f"; with {len(problem.cuts)} diversity cuts" if problem.cuts else ""
    if problem.meta.get("engine"):
        from ..engines import restriction_note

        extra += restriction_note(problem.meta["engine"])
    msg = ("no architecture satisfies the budgets: " + "; ".join(parts) + extra
           + ". Relax the budgets marked UNREACHABLE"
           + ("" if any("UNREACHABLE" in p for p in parts) else " (none is: they conflict together; relax one)"))
    return InfeasibleError(msg, least)


def _options(time_limit: float | None, mip_gap: float, threads: int | None, warm: np.ndarray | None,
             extra: Mapping[str, Any] | None, verbose: bool = False) -> Any:
    from ..solvers import SolveOptions

    if time_limit is not None and not time_limit > 0:
        raise ConfigError(f"time_limit must be > 0 seconds, got {time_limit}")
    if not (0.0 <= mip_gap < 1.0):
        raise ConfigError(f"mip_gap must be in [0, 1), got {mip_gap}")
    return SolveOptions(time_limit=time_limit, mip_gap=float(mip_gap), threads=threads, warm_start=warm,
                        extra=dict(extra or {}), verbose=verbose)


def solve_problem(
    problem: Problem,
    solver: str | None = None,
    *,
    time_limit: float | None = None,
    mip_gap: float = 0.0,
    threads: int | None = None,
    presolve_: bool = True,
    incumbent: Sequence[int] | None = None,
    solver_options: Mapping[str, Any] | None = None,
    verbose: bool = False,
    lower_bound: float | None = None,
) -> Solution:
    """Solve one problem; returns a Solution of any status (never raises for infeasibility).

    ``lower_bound`` (minimisation form) is a known bound on the optimum that a
    backend may use to go faster (e.g. the previous diverse solution's objective).
    """
    from ..solvers import get_solver

    backend = get_solver(solver)
    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    sub, warm = problem, None
    red = None
    if presolve_:
        inc = None if incumbent is None else np.asarray(incumbent, dtype=np.int64)
        red = presolve(problem, inc, fixing=backend.presolve_fixing)
        info.update(red.info())
        if red.infeasible:
            return problem.make_solution(None, Status.INFEASIBLE, solver=backend.name,
                                         seconds=time.perf_counter() - t0, info=info)
        sub, warm = red.problem, red.incumbent
    elif incumbent is not None:
        warm = np.asarray(incumbent, dtype=np.int64)
    if warm is not None and "warm_start" not in backend.capabilities:
        warm = None
    left = None if time_limit is None else max(1e-3, time_limit - (time.perf_counter() - t0))
    opts = _options(left, mip_gap, threads, warm, solver_options, verbose)
    hints: dict[str, Any] = {}
    lbs = [b for b in (lower_bound, None if red is None else red.lower_bound) if b is not None and math.isfinite(b)]
    if lbs:
        hints["lower_bound"] = max(lbs)
    if red is not None and red.lam is not None and red.lam.size > 1:
        hints["lp_duals"] = red.lam
    if red is not None:
        hints["presolve_incumbent"] = red.incumbent is not None
    opts = replace(opts, hints=hints)
    try:
        raw = backend.solve(sub, opts)
    except SolverError:
        raise
    except Exception as e:
        raise SolverError(f"solver {backend.name!r} failed: {type(e).__name__}: {e}") from e
    info.update(raw.info)
    seconds = time.perf_counter() - t0
    lb = -math.inf if red is None else red.lower_bound
    status, chosen, bound = raw.status, None, None
    if raw.bound is not None:
        b = -raw.bound if problem.maximize else raw.bound
        lb = max(lb, b)
    if raw.status.has_solution:
        chosen = problem.origin_to_local(raw.candidates)
        if chosen is None:
            raise SolverError(f"solver {backend.name!r} returned candidates that are not in the problem")
    elif red is not None and red.incumbent is not None:
        if raw.status is Status.INFEASIBLE:
            raise SolverError(f"solver {backend.name!r} claims infeasible, but presolve found a feasible architecture")
        chosen = problem.origin_to_local(sub.origin[red.incumbent])
        status = Status.FEASIBLE
        info["from"] = "presolve incumbent (the solver stopped without a solution)"
    if chosen is not None and status is not Status.OPTIMAL and math.isfinite(lb):
        bound = lb
    elif status is Status.OPTIMAL:
        bound = lb if math.isfinite(lb) else None
    return problem.make_solution(chosen, status, solver=raw.solver or backend.name, seconds=seconds, bound=bound,
                                 message=raw.message, info=info)


def search(
    source: Any,
    objective: str | None = None,
    budgets: Mapping[str, Any] | None = None,
    *,
    maximize: bool = False,
    scenario: Any = None,
    constraints: Iterable[Any] = (),
    constants: Mapping[str, float] | None = None,
    solver: str | None = None,
    time_limit: float | None = None,
    mip_gap: float = 0.0,
    threads: int | None = None,
    presolve: bool = True,
    solver_options: Mapping[str, Any] | None = None,
    engine: str | None = None,
) -> Solution:
    """The best architecture: one candidate per layer, optimising ``objective`` under ``budgets``.

    ``source`` is a :class:`~puzzlekit.BlockLibrary`, a path to one, or a
    :class:`Problem`.  ``budgets`` maps cost names to an upper bound, a
    ``(lower, upper)`` pair or ``"<=X"``; ``constraints`` are human ones
    (:class:`~puzzlekit.search.MemoryLimit`, ...).  Raises
    :class:`~puzzlekit.errors.InfeasibleError` (naming each budget and the
    least value it could reach) when nothing fits.  A time limit returns the
    best verified solution found with ``status=FEASIBLE`` and its ``gap``.  ``engine`` keeps only
    candidates that serving engine serves (``puzzlekit.engines``).

    Budgets and the solution's ``costs`` are whole-model totals: the library's
    non-block costs for the scenario (``lib.non_block_costs_for(scenario)``,
    written by ``profile_library``) are added by default; ``constants=``
    replaces them (``{}``: block costs alone).
    """
    t0 = time.perf_counter()
    problem = build_problem(source, objective, budgets, maximize=maximize, scenario=scenario,
                            constraints=constraints, constants=constants, engine=engine)
    left = None if time_limit is None else max(1e-3, time_limit - (time.perf_counter() - t0))
    one = [i for i in problem.budget_rows]
    if solver is None and presolve and len(one) == 1 and _one_budget_dp_ready(problem, one[0]) and mip_gap == 0:
        # the exact one-budget dynamic programme (see sweep); the backend otherwise
        name = problem.cost_names[one[0]]
        sol = sweep(problem, vary=name, values=[float(problem.upper[one[0]])], method="dp").points[0][1]
    else:
        sol = solve_problem(problem, solver, time_limit=left, mip_gap=mip_gap, threads=threads,
                            presolve_=presolve, solver_options=solver_options)
    sol.solve_seconds = time.perf_counter() - t0
    if sol.status is Status.INFEASIBLE:
        raise infeasible_error(problem)
    if sol.status is Status.ERROR:
        raise SolverError(f"solver {sol.solver!r} failed: {sol.message or 'no solution'}")
    return sol


def search_diverse(
    source: Any,
    objective: str | None = None,
    budgets: Mapping[str, Any] | None = None,
    *,
    num_solutions: int = 3,
    min_diversity: int = 1,
    progress: Any = None,
    **kw: Any,
) -> list[Solution]:
    """Diverse top-k: up to ``num_solutions`` answers in objective order, each differing from every
    earlier one in at least ``min_diversity`` layers.  Fewer are returned when no more exist.
    ``progress(done, total)`` (optional) is called after each solution."""
    if isinstance(num_solutions, bool) or not isinstance(num_solutions, int) or num_solutions < 1:
        raise ConfigError(f"num_solutions must be a positive integer, got {num_solutions!r}")
    t0 = time.perf_counter()
    build_kw = {k: kw.pop(k) for k in ("maximize", "scenario", "constraints", "constants", "engine") if k in kw}
    problem = build_problem(source, objective, budgets, **build_kw)
    if isinstance(min_diversity, bool) or not isinstance(min_diversity, int) or not (
            1 <= min_diversity <= problem.num_layers):
        raise ConfigError(f"min_diversity must be an integer in 1..{problem.num_layers}, got {min_diversity!r}")
    pres = kw.pop("presolve", True)
    out: list[Solution] = []
    prev_min: float | None = None  # each cut can only make the optimum worse: a lower bound for the next
    for k in range(num_solutions):
        t1 = time.perf_counter()
        sol = solve_problem(problem, presolve_=pres, lower_bound=prev_min, **kw)
        sol.solve_seconds = time.perf_counter() - (t0 if k == 0 else t1)
        if sol.status is Status.INFEASIBLE:
            if k == 0:
                raise infeasible_error(problem)
            break
        if sol.status is Status.ERROR:
            raise SolverError(f"solver {sol.solver!r} failed on solution {k + 1}: {sol.message or 'no solution'}")
        out.append(sol)
        if progress is not None:
            progress(k + 1, num_solutions)
        prev_min = -sol.objective if problem.maximize else sol.objective
        problem = problem.with_cut(problem.origin_to_local(sol.candidates), min_diversity)
    return out


# ---- sweeps -------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """The optimum at each value of one budget (``points``: ``(value, Solution)`` in the given order)."""

    vary: str
    objective: str
    points: list[tuple[float, Solution]]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        pts = []
        for v, s in self.points:
            pts.append({"value": float(v), "status": s.status.value,
                        "objective": None if s.objective is None else float(s.objective),
                        "costs": {k: float(x) for k, x in s.costs.items()}, "solver": s.solver})
        return {"vary": self.vary, "objective": self.objective, "seconds": self.seconds, "points": pts}

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write one row per point (value, status, objective, every cost) atomically."""
        from ..io import atomic_path

        names = sorted({k for _, s in self.points for k in s.costs})
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow([self.vary, "status", self.objective, *names])
            for v, s in self.points:
                w.writerow([repr(float(v)), s.status.value, "" if s.objective is None else repr(s.objective),
                            *[repr(s.costs[n]) if n in s.costs else "" for n in names]])

    def plot(self, path: str | os.PathLike) -> None:
        """Objective against the varied budget, saved as an image (needs matplotlib)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise ConfigError("plotting needs matplotlib: pip install 'puzzlekit[plot]'") from None
        from ..io import atomic_path

        xs = [v for v, s in self.points if s.objective is not None]
        ys = [s.objective for _, s in self.points if s.objective is not None]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(xs, ys, marker=".", drawstyle="steps-post")
        ax.set_xlabel(f"{self.vary} budget")
        ax.set_ylabel(self.objective)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        suffix = os.path.splitext(str(path))[1] or ".png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=suffix.lstrip("."))
        plt.close(fig)


def _one_budget_dp_ready(problem: Problem, i: int) -> bool:
    others = [r for r in problem.budget_rows if r != i]
    return not others and not problem.cuts and not math.isfinite(problem.lower[i])


def sweep(
    source: Any,
    objective: str | None = None,
    vary: str = "memory_mib",
    values: Sequence[float] = (),
    budgets: Mapping[str, Any] | None = None,
    *,
    maximize: bool = False,
    scenario: Any = None,
    constraints: Iterable[Any] = (),
    constants: Mapping[str, float] | None = None,
    solver: str | None = None,
    method: str = "auto",
    time_limit: float | None = None,
    engine: str | None = None,
    progress: Any = None,
) -> SweepResult:
    """The exact optimum at each value of the ``vary`` upper budget (other budgets fixed).

    ``method="auto"`` uses the exact one-budget dynamic programme when
    ``vary`` is the only budget, and otherwise the backend with warm starts
    from the previous point (values are solved in increasing order, so the
    previous optimum stays feasible); ``"solver"`` always uses the backend.
    Infeasible points are kept with status ``INFEASIBLE``.  ``progress(done, total)`` (optional) is
    called as points are answered.
    """
    t0 = time.perf_counter()
    vals = [float(v) for v in values]
    if not vals:
        raise ConfigError("sweep: give at least one value")
    if any(math.isnan(v) for v in vals):
        raise ConfigError("sweep: values must be numbers, got NaN")
    if method not in ("auto", "solver", "dp"):
        raise ConfigError(f"sweep: method must be 'auto', 'solver' or 'dp', got {method!r}")
    b = dict(budgets or {})
    if vary in b:
        raise ConfigError(f"sweep: {vary!r} is varied; do not also give it in budgets")
    if isinstance(source, Problem) and vary in source.cost_names:
        b[vary] = (source.lower[source.cost_names.index(vary)], vals[0])
    else:
        b[vary] = (None, vals[0])
    problem = build_problem(source, objective, b, maximize=maximize, scenario=scenario, constraints=constraints,
                            constants=constants, engine=engine)
    i = problem.cost_names.index(vary)
    lo_i = problem.lower[i]
    use_dp = method == "dp" or (method == "auto" and _one_budget_dp_ready(problem, i))
    if method == "dp" and not _one_budget_dp_ready(problem, i):
        raise ConfigError("sweep: method='dp' needs the varied budget to be the only one (an upper bound)")
    results: dict[int, Solution] = {}
    prev: np.ndarray | None = None
    order = sorted(range(len(vals)), key=lambda k: vals[k])
    if use_dp:
        keep = dominance_mask(problem, problem.costs[:, [i]].T)
        sub0 = problem.subset(keep)
        paths = Paths(sub0)
        c, g = sub0.c, sub0.costs[:, i]
        const = sub0.constants[i]
        tmin = paths.best(g)[0]
        feasible = []
        for k in order:
            H = vals[k] - const
            if tmin > H + 1e-9 * max(1.0, abs(H)):
                results[k] = problem.make_solution(None, Status.INFEASIBLE, solver=DP_SOLVER, seconds=0.0)
            else:
                feasible.append(k)
        # points sharing one programme (its final states are the frontier) are pruned with the incumbent of
        # their smallest budget, whose optimum bounds every other point's
        size = len(feasible) if len(feasible) >= _SWEEP_ONE_PROGRAMME else 1
        for s0 in range(0, len(feasible), size):
            t1 = time.perf_counter()
            seg = feasible[s0:s0 + size]
            Ha = vals[seg[0]] - const
            tol = 1e-9 * max(1.0, abs(Ha))
            lb, lam, feas = lagrangian_1d(paths, c, g, Ha, tol)
            if prev is not None:
                feas.append(prev)
            ub, G1, h1 = math.inf, g[None, :], np.array([Ha])
            for x in sorted(feas, key=lambda x: float(c[x].sum()))[:2]:
                x = _improve(sub0, G1, h1, x, np.array([tol]))
                if g[x].sum() <= Ha + tol:
                    ub = min(ub, float(c[x].sum()))
            p = sub0.with_budgets({vary: (lo_i, vals[seg[-1]])})
            answers = dp_one_budget(p, ub, lam, paths, answer_at=[vals[k] - const for k in seg])
            share = (time.perf_counter() - t1) / len(seg)
            for k, (x, v) in zip(seg, answers):
                if x is None:
                    raise SolverError(f"sweep: the dynamic programme found nothing at {vary} = {vals[k]} although "
                                      "a cover meets the budget (please report this)")
                prev = x
                chosen = problem.origin_to_local(sub0.origin[x])
                results[k] = problem.with_budgets({vary: (lo_i, vals[k])}).make_solution(
                    chosen, Status.OPTIMAL, solver=DP_SOLVER, seconds=share, bound=v,
                    info={"lagrangian_bound": lb if k == seg[0] else None, "segment": len(seg)})
            if progress is not None:
                progress(len(results), len(vals))
    else:
        for k in order:
            p = problem.with_budgets({vary: (lo_i, vals[k])})
            inc = prev if prev is not None and not p.violations(prev) else None
            s = solve_problem(p, solver, incumbent=inc, time_limit=time_limit)
            if s.status.has_solution:
                prev = p.origin_to_local(s.candidates)
            results[k] = s
            if progress is not None:
                progress(len(results), len(vals))
    return SweepResult(vary, problem.objective_name, [(vals[k], results[k]) for k in range(len(vals))],
                       time.perf_counter() - t0)


def pareto_front(
    source: Any,
    objective: str | None = None,
    cost: str = "memory_mib",
    budgets: Mapping[str, Any] | None = None,
    *,
    low: float | None = None,
    high: float | None = None,
    maximize: bool = False,
    scenario: Any = None,
    constraints: Iterable[Any] = (),
    constants: Mapping[str, float] | None = None,
    solver: str | None = None,
    max_points: int = 100_000,
) -> list[Solution]:
    """The exact Pareto frontier of ``objective`` against ``cost`` (from ``high`` down to ``low``).

    Each point is an optimum at a budget strictly below the previous point's
    cost (the exact DP for a single budget; with a backend, below by
    ``max(1e-6, 2e-9·|cost|)``, so costs closer than that may merge).  Points are returned in decreasing cost.
    ``low``, ``high`` and the points' costs are whole-model totals: ``constants`` (default: the library's
    non-block costs, see :func:`build_problem`) shift every point's cost, never the front's shape.
    """
    b = dict(budgets or {})
    b[cost] = (None, high)
    problem = build_problem(source, objective, b, maximize=maximize, scenario=scenario, constraints=constraints,
                            constants=constants)
    i = problem.cost_names.index(cost)
    if high is None:
        problem = problem.with_budgets({cost: (None, least_values(problem)[cost][1])})
    use_dp = _one_budget_dp_ready(problem, i)
    if not use_dp and solver is None:  # several budgets: windows of the exact programme (search.pareto)
        from .pareto import multi_budget_front

        return multi_budget_front(problem, cost, low=low, max_points=max_points)
    front: list[Solution] = []

    def add(s: Solution) -> bool:
        """Append a point (merging equal objectives); False when the walk must stop."""
        if front and abs(front[-1].objective - s.objective) <= 1e-12 * max(1.0, abs(s.objective)):
            front[-1] = s
        else:
            front.append(s)
        return len(front) < max_points and not (low is not None and s.costs[cost] <= low)

    if use_dp:  # one pass of the programme: its final states are the whole front (on block costs)
        t1 = time.perf_counter()
        sub0 = problem.subset(dominance_mask(problem, problem.costs[:, [i]].T))
        for x, v, _ in dp_front(sub0):
            s = problem.make_solution(problem.origin_to_local(sub0.origin[x]), Status.OPTIMAL, solver=DP_SOLVER,
                                      seconds=time.perf_counter() - t1, bound=v)  # the pass is the first's
            t1 = time.perf_counter()
            if not add(s):
                break
        return front
    cur = problem
    prev_cost: float | None = None
    while True:
        s = solve_problem(cur, solver)
        if not s.status.has_solution:
            break
        c = s.costs[cost]
        if prev_cost is not None and c >= prev_cost:
            break
        if not add(s):
            break
        prev_cost = c
        cur = cur.with_budgets({cost: (None, c - max(1e-6, 2e-9 * abs(c)))})
    return front
