"""Exact search with the serving batch chosen by memory (see :mod:`puzzlekit.search.deploy` for the model).

**Throughput target** (``search``).  ``T(x) >= τ`` holds iff some batch ``b``
has ``memory_b(x) <= limit`` and ``runtime_b(x) <= 1000·b·S/τ``: two linear
budgets.  So ``min objective s.t. T(x) >= τ`` is the best over batches of one
MIP per batch.  Batches are visited in order of a Lagrangian lower bound (each
row's own multiplier: milliseconds); a batch whose bound, or failing that its LP
bound, cannot beat the best answer so far is skipped, so the answer stays exact
while usually one MIP is solved.

**Quality bound** (``max_throughput``): the highest ``T(x)`` with
``objective(x) <= q``.  Written per batch it is ``min runtime_b`` under the
objective and memory rows, a problem the exact solver finds hard (the
objective row takes a different value on every candidate, so no two partial
covers merge).  It is solved instead through the fast problems above: with
``g(τ)`` the least objective at throughput ``>= τ`` (non-decreasing in ``τ``),
the answer is the largest ``τ`` with ``g(τ) <= q``.  A bracket ``[τ_lo, τ_hi)``
holds it: ``τ_lo`` the throughput of the best architecture found with
objective ``<= q``, ``τ_hi`` a throughput that nothing within ``q`` reaches
(initially the per-batch LP bounds of the runtime problem).  Each step asks
"does anything within ``q`` reach ``τ``?" (a scan stopped at the first batch
that says yes, skipping batches whose bounds say no); a yes moves ``τ_lo`` up
to the throughput of what was found, a no moves ``τ_hi`` down to ``τ``.  The
steps alternate a probe just above ``τ_lo`` (a no ends the search) with
geometric steps up from ``τ_lo`` (until the first no) or bisection.  It stops when ``τ_hi <= τ_lo · (1 + 1e-9)``: the found
architecture is then optimal to that relative tolerance (1e-8).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from ..errors import ConfigError, InfeasibleError, SolverError
from .deploy import _MEM, _RT, ArchitectureFit, Deployment, FitCosts, resolve_parent
from .problem import Problem
from .solution import Solution, Status

__all__ = ["FitSolution", "AtFit", "search_at_fit", "max_throughput_at_fit"]

#: Relative width of the throughput bracket at which ``max_throughput`` stops (its optimality tolerance; above
#: the budgets' 1e-9 re-verification tolerance, so a find at ``τ`` is always strictly above the bracket's bottom).
REL_TOL = 1e-8


@dataclass
class FitSolution(Solution):
    """A :class:`Solution` served at the batch that fits: the batch, its throughput and the parent's.

    ``costs`` hold ``runtime_ms``, ``memory_mib`` and ``tokens_per_s`` at ``batch``
    (plus any batch-independent budget).  ``scan``: one row per batch, what the
    search did there (``solved``, ``pruned`` by its bound, ``infeasible``).
    """

    batch: int | None = None
    tokens_per_s: float = 0.0
    speedup: float | None = None
    reference_batch: int | None = None
    reference_tokens_per_s: float | None = None
    scan: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.update({"batch": self.batch, "tokens_per_s": self.tokens_per_s, "speedup": self.speedup,
                  "reference": {"batch": self.reference_batch, "tokens_per_s": self.reference_tokens_per_s},
                  "scan": self.scan})
        return d


def _bound(p: Problem, lp: bool = False, incumbent: bool = True) -> tuple[float, np.ndarray | None]:
    """``(lower bound, a feasible cover or None)`` of a problem in minimisation form; ``(inf, None)`` when no
    cover meets one of its rows.  The bound is the best one-row Lagrangian bound (each row's multiplier by
    bisection): weaker than the LP bound of all rows together, but a few milliseconds instead of an LP;
    ``lp=True``: presolve's LP bound and incumbent."""
    from .presolve import Paths, lagrangian_1d, presolve

    if lp:
        red = presolve(p, fixing=False)
        if red.infeasible:
            return math.inf, None
        inc = None if red.incumbent is None else p.origin_to_local(red.problem.origin[red.incumbent])
        return red.lower_bound, inc

    G, h = p.le_rows()
    paths = Paths(p)
    c = p.c
    lb, seen = paths.best(c)[0], []
    for r in range(G.shape[0]):
        tol = 1e-9 * max(1.0, abs(h[r]))
        if paths.best(G[r])[0] > h[r] + tol:
            return math.inf, None
        v, _, feas = lagrangian_1d(paths, c, G[r], float(h[r]), tol)
        lb = max(lb, v)
        seen.extend(feas)
    if not incumbent:
        return lb, None
    seen.sort(key=lambda x: float(c[x].sum()))
    return lb, next((x for x in seen[:8] if not p.violations(x)), None)


class AtFit:
    """One library, one objective, one deployment: the per-batch problems and their exact best.

    The cost tables are built once and shared by every call (``search``,
    ``max_throughput``, ``front``, ``evaluate``).  ``parent``: the library's
    parent dimensions when it records none (a ParentSpec, a config path, ``"super-49b"``).
    """

    def __init__(self, source: Any, objective: str, deployment: Deployment | None = None, *, parent: Any = None,
                 maximize: bool = False, budgets: Mapping[str, Any] | None = None, constraints: Iterable[Any] = ()):
        from ..architecture import Architecture
        from .api import build_problem

        if isinstance(source, (str, os.PathLike)):
            from ..library import BlockLibrary

            source = BlockLibrary.load(source)
        self.library = source
        self.dep = deployment or Deployment()
        self.spec = resolve_parent(parent, source)
        if self.spec.num_hidden_layers != source.num_layers:
            raise ConfigError(f"parent has {self.spec.num_hidden_layers} layers, the library {source.num_layers}; "
                              "pass the library's parent (parent=)")
        constraints = list(constraints)
        for c in constraints:
            if type(c).__name__ in ("MemoryLimit", "ThroughputTarget", "LatencyLimit", "TTFTLimit"):
                raise ConfigError(f"{type(c).__name__}: the deployment sets memory and runtime per batch; give the "
                                  "memory as Deployment(memory_gib=...) and the target as min_speedup / min_tokens_per_s")
        clash = {_RT, _MEM} & set(budgets or {})
        if not clash:
            # the deployment adds the non-block runtime and memory per batch itself (FitCosts.non_block): the
            # base problem keeps the library's block costs alone (constants={}, not the library's record)
            self.base = build_problem(source, objective, budgets, maximize=maximize, constraints=constraints,
                                      constants={})
            clash = {_RT, _MEM} & set(self.base.cost_names)
        if clash:
            raise ConfigError(f"budget on {sorted(clash)[0]!r}: the deployment sets runtime and memory per batch; "
                              "budget batch-independent costs only (e.g. num_params)")
        blocks = [source.candidates[int(o)].block for o in self.base.origin]
        self.blocks = list(dict.fromkeys(blocks))
        pos = {b: i for i, b in enumerate(self.blocks)}
        self.inv = np.array([pos[b] for b in blocks], dtype=np.int64)
        self.costs = FitCosts(self.spec, self.dep, source)
        self.parent_arch = Architecture.homogeneous(self.spec)
        self._ref: ArchitectureFit | None = None

    # ---- evaluation -------------------------------------------------------------------------
    def evaluate(self, arch: Any) -> ArchitectureFit:
        """An architecture (or its list of blocks) under this deployment."""
        return self.costs.evaluate(getattr(arch, "blocks", arch))

    def reference(self) -> ArchitectureFit:
        """The parent at the batch it fits (without ``min_kv_tokens``: the reference need not hold that cache)."""
        if self._ref is None:
            costs = self.costs
            if self.dep.min_kv_tokens:
                costs = FitCosts(self.spec, replace(self.dep, min_kv_tokens=0), self.library)
            self._ref = costs.evaluate(self.parent_arch.blocks)
        return self._ref

    def target_tokens_per_s(self, min_speedup: float | None = None, min_tokens_per_s: float | None = None) -> float:
        """The target in tokens/s (``min_speedup`` × the parent's throughput at the batch the parent fits)."""
        if (min_speedup is None) == (min_tokens_per_s is None):
            raise ConfigError("throughput at the batch that fits: give exactly one of min_speedup (x the parent's "
                              "throughput at the batch the parent fits) or min_tokens_per_s")
        v = min_speedup if min_speedup is not None else min_tokens_per_s
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
            raise ConfigError(f"throughput target must be a positive number, got {v!r}")
        if min_tokens_per_s is not None:
            return float(min_tokens_per_s)
        ref = self.reference()
        if not ref.fits:
            raise ConfigError(f"the parent fits no batch of {list(self.dep.batches)} in {self.costs.limit_mib / 1024:.1f} "
                              f"GiB ({self.dep.describe()}); give the target in tokens/s (min_tokens_per_s)")
        return float(min_speedup) * ref.tokens_per_s

    # ---- per-batch problems ---------------------------------------------------------------------
    def _cols(self, batch: int) -> tuple[np.ndarray, np.ndarray, float, float]:
        rt, mem = self.costs.columns(self.blocks, batch)
        nrt, nmem = self.costs.non_block(batch)
        return rt[self.inv], mem[self.inv], nrt, nmem

    def problem(self, batch: int, tokens_per_s: float | None = None) -> Problem:
        """Minimise the objective at ``batch``: memory within the limit and (with a target) the runtime it allows."""
        b = self.base
        rt, mem, nrt, nmem = self._cols(batch)
        R = math.inf if tokens_per_s is None else 1000.0 * batch * self.dep.sequence_length / tokens_per_s
        return Problem(b.num_layers, b.first, b.last, b.objective, np.column_stack([b.costs, rt, mem]),
                       (*b.cost_names, _RT, _MEM), np.r_[b.lower, -np.inf, -np.inf],
                       np.r_[b.upper, R, self.costs.limit_mib], np.r_[b.constants, nrt, nmem],
                       maximize=b.maximize, objective_name=b.objective_name, labels=b.labels, origin=b.origin)

    def runtime_problem(self, batch: int, bound: float | None) -> Problem:
        """Minimise the runtime at ``batch``: memory within the limit, the objective within ``bound``."""
        b = self.base
        rt, mem, _, nmem = self._cols(batch)
        q = (-np.inf, np.inf) if bound is None else ((bound, np.inf) if b.maximize else (-np.inf, bound))
        return Problem(b.num_layers, b.first, b.last, rt, np.column_stack([b.costs, b.objective, mem]),
                       (*b.cost_names, b.objective_name, _MEM), np.r_[b.lower, q[0], -np.inf],
                       np.r_[b.upper, q[1], self.costs.limit_mib], np.r_[b.constants, 0.0, nmem],
                       objective_name=_RT, labels=b.labels, origin=b.origin)

    def _blocks_of(self, x: np.ndarray) -> list[Any]:
        return [self.library.candidates[int(self.base.origin[j])].block for j in x]

    def _tput(self, x: np.ndarray, batches: Sequence[int] | None = None) -> float:
        return self.costs.evaluate(self._blocks_of(x), batches).tokens_per_s

    def _report(self, batch: int, x: np.ndarray, status: Status, solver: str, t0: float, scan: list[dict],
                info: Mapping[str, Any] | None = None, batches: Sequence[int] | None = None) -> FitSolution:
        """The answer in the user's terms: objective, costs and throughput at the batch where it serves best
        (among ``batches``, default the deployment's)."""
        sol = self.problem(batch).make_solution(x, status, solver=solver, seconds=time.perf_counter() - t0)
        ev = self.costs.evaluate(self._blocks_of(x), batches)
        at = ev.at(ev.batch) if ev.fits else ev.at(batch)
        costs = dict(sol.costs)
        costs.update({_RT: at["runtime_ms"], _MEM: at["memory_mib"], "tokens_per_s": at["tokens_per_s"]})
        ref = self.reference()
        kw = {f.name: getattr(sol, f.name) for f in fields(Solution)}
        kw["costs"] = costs
        kw["info"] = {**sol.info, **(info or {}), "solved_at_batch": batch,
                      "monotone": self.costs.monotone(self.blocks, self.dep.batches),
                      "memory_limit_mib": self.costs.limit_mib, "deployment": self.dep.describe(),
                      "runtimes": {str(b): sorted(s) for b, s in sorted(self.costs.sources.items())}}
        return FitSolution(**kw, batch=ev.batch, tokens_per_s=ev.tokens_per_s,
                           speedup=(ev.tokens_per_s / ref.tokens_per_s) if ref.fits else None,
                           reference_batch=ref.batch, reference_tokens_per_s=ref.tokens_per_s if ref.fits else None,
                           scan=scan)

    def _scan(self, tau: float, batches: Sequence[int], solver: str | None, deadline: float | None,
              stop_at: float | None = None) -> tuple[list[dict], int | None, np.ndarray | None, bool, str]:
        """Least objective (min form) with throughput ``>= tau`` over ``batches``, best bound first.

        With ``stop_at``, a decision: stop at the first answer ``<= stop_at`` and skip batches whose
        bound is above it.  Returns ``(scan rows, batch, chosen, proven, solver)``.
        """
        from .api import solve_problem

        scan: list[dict[str, Any]] = []
        probs, bounds = {}, {}
        for b in batches:
            p = probs[b] = self.problem(b, tau)
            bounds[b], _ = _bound(p, incumbent=False)
            if not math.isfinite(bounds[b]):
                scan.append({"batch": b, "status": "infeasible"})
        best_b, best_x, best_v, proven, name = None, None, math.inf, True, solver or ""
        cut = math.inf if stop_at is None else stop_at
        for b in sorted((b for b in bounds if math.isfinite(bounds[b])), key=lambda b: (bounds[b], -b)):
            p, lb = probs[b], bounds[b]
            lim = min(best_v, cut + 1e-9 * max(1.0, abs(cut))) if math.isfinite(cut) else best_v
            if math.isfinite(lim) and lb >= lim - 1e-9 * max(1.0, abs(lim)):
                scan.append({"batch": b, "status": "pruned", "bound": lb})
                continue
            if math.isfinite(lim):  # a second chance at pruning: the LP bound of all rows (an LP, not a MIP)
                lb = max(lb, _bound(p, lp=True)[0])
                if lb >= lim - 1e-9 * max(1.0, abs(lim)):
                    scan.append({"batch": b, "status": "pruned", "bound": lb})
                    continue
            left = None if deadline is None else max(1e-3, deadline - time.perf_counter())
            inc = best_x if best_x is not None and not p.violations(best_x) else None
            t1 = time.perf_counter()
            s = solve_problem(p, solver, incumbent=inc, time_limit=left)
            if s.status is Status.ERROR:
                raise SolverError(f"solver {s.solver!r} failed at batch {b}: {s.message or 'no solution'}")
            row = {"batch": b, "status": "solved" if s.status.has_solution else s.status.value, "bound": lb,
                   "seconds": time.perf_counter() - t1}
            if s.status.has_solution:
                x = p.origin_to_local(s.candidates)
                v = float(p.c[x].sum())
                row["objective"] = s.objective
                if v < best_v:
                    best_b, best_x, best_v, name = b, x, v, s.solver
                if s.status is not Status.OPTIMAL:
                    proven = False
            scan.append(row)
            if stop_at is not None and best_v <= cut + 1e-9 * max(1.0, abs(cut)):
                break
        scan.sort(key=lambda r: r["batch"])
        return scan, best_b, best_x, proven, name

    # ---- the two searches -------------------------------------------------------------------------
    def search(self, *, min_speedup: float | None = None, min_tokens_per_s: float | None = None,
               batches: Sequence[int] | None = None, solver: str | None = None,
               time_limit: float | None = None) -> FitSolution:
        """The best objective whose throughput at the batch that fits is at least the target."""
        t0 = time.perf_counter()
        tau = self.target_tokens_per_s(min_speedup, min_tokens_per_s)
        bs = list(batches or self.dep.batches)
        deadline = None if time_limit is None else t0 + time_limit
        scan, b, x, proven, name = self._scan(tau, bs, solver, deadline)
        if b is None:
            best = self.max_throughput(batches=bs, solver=solver)
            ref = self.reference()
            raise InfeasibleError(
                f"no architecture reaches {tau:,.0f} tokens/s at a batch that fits ({self.dep.describe()}, memory <= "
                f"{self.costs.limit_mib / 1024:.1f} GiB, batches {bs}): the fastest reaches "
                f"{best.tokens_per_s:,.0f} tokens/s at batch {best.batch}"
                + (f" ({best.tokens_per_s / ref.tokens_per_s:.2f}x the parent's)" if ref.fits else "")
                + "; lower the target", {"tokens_per_s": best.tokens_per_s})
        return self._report(b, x, Status.OPTIMAL if proven else Status.FEASIBLE, name, t0, scan,
                            {"target_tokens_per_s": tau}, bs)

    def max_throughput(self, *, bound: float | None = None, batches: Sequence[int] | None = None,
                       solver: str | None = None, time_limit: float | None = None) -> FitSolution:
        """The highest throughput at the batch that fits with the objective within ``bound``
        (``<=`` when minimising, ``>=`` when maximising; None: no bound, the fastest that fits)."""
        t0 = time.perf_counter()
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float))
                                  or not math.isfinite(bound)):
            raise ConfigError(f"objective bound must be a finite number, got {bound!r}")
        bs = list(batches or self.dep.batches)
        deadline = None if time_limit is None else t0 + time_limit
        S = self.dep.sequence_length
        # per batch: an upper bound on the throughput within the bound (LP bound on its runtime) and a start
        ub: dict[int, float] = {}
        best_x, lo, name = None, 0.0, "presolve incumbent"
        for b in bs:
            lb, inc = _bound(self.runtime_problem(b, bound), lp=True)
            if not math.isfinite(lb):
                continue
            ub[b] = 1000.0 * b * S / max(lb + self.costs.non_block(b)[0], 1e-300)
            if inc is not None and self._tput(inc, bs) > lo:
                best_x, lo = inc, self._tput(inc, bs)
        what = "no bound" if bound is None else \
            f"{self.base.objective_name} {'>=' if self.base.maximize else '<='} {bound:g}"
        if not ub:
            raise InfeasibleError(f"no architecture with {what} fits any batch of {bs} in "
                                  f"{self.costs.limit_mib / 1024:.1f} GiB ({self.dep.describe()}); relax the bound "
                                  "or the memory", {})
        q = math.inf if bound is None else (-bound if self.base.maximize else bound)
        hi = max(ub.values()) * (1 + 1e-12)
        if best_x is None:  # nothing yet: the least objective that fits, at any throughput
            _, _, best_x, _, name = self._scan(1e-300, bs, solver, deadline)
            if best_x is None or float(self.base.c[best_x].sum()) > q + 1e-9 * max(1.0, abs(q)):
                raise InfeasibleError(f"no architecture with {what} fits any batch of {bs} "
                                      f"({self.dep.describe()}); relax the bound or the memory", {})
            lo = self._tput(best_x, bs)
        # each step is a probe (is anything faster than the best found at all?) when the best found has not been
        # probed and the last step was not one, else a geometric step up from it (until the first no), else bisection
        steps, proven, lo_probed, last_probe, gallop = 0, True, False, False, 0.005
        while hi > lo * (1 + REL_TOL):
            if deadline is not None and time.perf_counter() > deadline:
                proven = False
                break
            steps += 1
            probe = not lo_probed and not last_probe
            if probe:
                tau, lo_probed = lo * (1 + REL_TOL), True
            elif gallop:
                tau = min(0.5 * (lo + hi), lo * (1 + gallop))
            else:
                tau = 0.5 * (lo + hi)
            last_probe = probe
            live = [b for b in bs if ub.get(b, 0.0) >= tau]
            _, b, x, ok, found_by = self._scan(tau, live, solver, deadline, stop_at=q)
            proven = proven and ok
            v = math.inf if x is None else float(self.base.c[x].sum())
            t = 0.0 if x is None else self._tput(x, bs)
            if x is not None and v <= q + 1e-9 * max(1.0, abs(q)) and t > lo:
                best_x, lo, lo_probed, name = x, t, False, found_by
                gallop *= 4
            else:
                hi, gallop = min(hi, tau), 0.0
        ev = self.costs.evaluate(self._blocks_of(best_x), bs)
        sol = self._report(ev.batch, best_x, Status.OPTIMAL if proven else Status.FEASIBLE, name, t0, [],
                           {"bound": bound, "throughput_upper_bound": hi, "level_steps": steps}, bs)
        sol.gap = None if proven else (hi - lo) / hi
        return sol

    def front(self, speedups: Sequence[float], *, batches: Sequence[int] | None = None,
              solver: str | None = None) -> list[FitSolution | None]:
        """The exact optimum at each throughput target (× the parent's); None where no architecture reaches it."""
        out: list[FitSolution | None] = []
        for n in speedups:
            try:
                out.append(self.search(min_speedup=float(n), batches=batches, solver=solver))
            except InfeasibleError:
                out.append(None)
        return out


def _deployment(deployment: Deployment | None, kw: dict[str, Any]) -> Deployment:
    unknown = set(kw) - {f.name for f in fields(Deployment)}
    if unknown:
        from ..errors import did_you_mean

        name = sorted(unknown)[0]
        raise ConfigError(f"unknown keyword {name!r}; {did_you_mean(name, [f.name for f in fields(Deployment)])}")
    if deployment is not None and kw:
        raise ConfigError(f"give a Deployment or its fields ({sorted(kw)}), not both")
    return deployment or Deployment(**kw)


def search_at_fit(source: Any, objective: str, deployment: Deployment | None = None, *,
                  min_speedup: float | None = None, min_tokens_per_s: float | None = None, parent: Any = None,
                  maximize: bool = False, budgets: Mapping[str, Any] | None = None, constraints: Iterable[Any] = (),
                  solver: str | None = None, time_limit: float | None = None, **deployment_fields: Any) -> FitSolution:
    """The best ``objective`` whose throughput at the batch that fits is ``min_speedup`` × the parent's
    (at the batch the parent fits) or ``min_tokens_per_s``.

    ``pk.search_at_fit(lib, "kl_div", parent="super-49b", hardware="h100-sxm", dtype="fp8", prefill=1000,
    decode=200, min_speedup=3.0)``; the deployment's fields (``batches``, ``memory_gib``, ``min_kv_tokens``,
    ``tp``, ...) as keywords or as a :class:`Deployment`.  Raises
    :class:`~puzzlekit.errors.InfeasibleError` naming the fastest reachable throughput.
    """
    dep = _deployment(deployment, dict(deployment_fields))
    fit = AtFit(source, objective, dep, parent=parent, maximize=maximize, budgets=budgets, constraints=constraints)
    return fit.search(min_speedup=min_speedup, min_tokens_per_s=min_tokens_per_s, solver=solver,
                      time_limit=time_limit)


def max_throughput_at_fit(source: Any, objective: str, deployment: Deployment | None = None, *,
                          bound: float | None = None, parent: Any = None, maximize: bool = False,
                          budgets: Mapping[str, Any] | None = None, constraints: Iterable[Any] = (),
                          solver: str | None = None, time_limit: float | None = None,
                          **deployment_fields: Any) -> FitSolution:
    """The highest throughput at the batch that fits with ``Σ objective <= bound`` (``>=`` with ``maximize``)."""
    dep = _deployment(deployment, dict(deployment_fields))
    fit = AtFit(source, objective, dep, parent=parent, maximize=maximize, budgets=budgets, constraints=constraints)
    return fit.max_throughput(bound=bound, solver=solver, time_limit=time_limit)
