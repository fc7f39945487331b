"""Exact reductions and specialised algorithms shared by every backend.

* :class:`Paths`: min-cost exact covers of the layers by candidate spans
  (a shortest path over layer positions), and the best cover through each
  candidate.  Used for the least value every budget can reach and for the
  Lagrangian relaxation, whose dual equals the LP bound (the cover polytope
  is integral).
* :func:`dominance_mask`: a candidate is dropped when another one for the
  same layers is no worse on the objective and on every constraint row.
* :func:`presolve`: dominance, a Lagrangian bound, a feasible incumbent from
  the Lagrangian solutions improved by single swaps, and reduced-cost
  fixing: candidate ``j`` is dropped when the best cover through ``j`` has a
  Lagrangian bound above the incumbent, so every solution at least as good as
  the incumbent survives.  The reduced problem has the same optimum.
* :func:`dp_one_budget`: an exact dynamic programme for one budget row and no
  cuts: Pareto states (cost, objective) per layer position, pruned by the
  remaining least cost and by a Lagrangian bound on the remaining objective.
  Every answer it gives is a proven optimum.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .problem import Problem

__all__ = ["Paths", "dominance_mask", "least_values", "presolve", "Reduction", "dp_one_budget", "dp_front",
           "lagrangian_1d"]


def _lead(flags: np.ndarray) -> np.ndarray:
    """``[True, *flags]`` (``np.r_`` costs ~30 µs a call; this is the hot path of the DPs)."""
    out = np.empty(flags.size + 1, dtype=bool)
    out[0] = True
    out[1:] = flags
    return out


class Paths:
    """Min-cost exact covers of ``problem``'s layers for any weight vector."""

    def __init__(self, problem: Problem):
        self.L = problem.num_layers
        self.first = problem.first
        self.last = problem.last
        self.n = problem.n
        self.single = problem.single_layer
        order = np.argsort(self.first, kind="stable")
        self.order = order
        if self.single:
            self.starts = np.searchsorted(self.first[order], np.arange(self.L))
            self.group = self.first[order]
        else:
            self.by_first = [order[a:b] for a, b in zip(np.searchsorted(self.first[order], np.arange(self.L)),
                                                         np.searchsorted(self.first[order], np.arange(1, self.L + 1)))]
            ol = np.argsort(self.last, kind="stable")
            self.by_end = [ol[a:b] for a, b in zip(np.searchsorted(self.last[ol], np.arange(-1, self.L)),
                                                    np.searchsorted(self.last[ol], np.arange(0, self.L + 1)))]

    def _group_min(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ws = w[self.order]
        m = np.minimum.reduceat(ws, self.starts)
        hit = np.flatnonzero(ws <= m[self.group])
        g = self.group[hit]
        firsts = hit[_lead(g[1:] != g[:-1])]
        return m, self.order[firsts]

    def backward(self, w: np.ndarray) -> np.ndarray:
        """``bwd[p]``: least weight of covering layers ``p..L-1`` (``bwd[L] = 0``)."""
        if self.single:
            m, _ = self._group_min(w)
            return np.concatenate([np.cumsum(m[::-1])[::-1], [0.0]])
        bwd = np.full(self.L + 1, np.inf)
        bwd[self.L] = 0.0
        for p in range(self.L - 1, -1, -1):
            J = self.by_first[p]
            if J.size:
                bwd[p] = np.min(w[J] + bwd[self.last[J] + 1])
        return bwd

    def best(self, w: np.ndarray) -> tuple[float, np.ndarray]:
        """Least total weight of an exact cover and one cover achieving it."""
        if self.single:
            m, arg = self._group_min(w)
            return float(m.sum()), arg
        bwd = self.backward(w)
        chosen, p = [], 0
        while p < self.L:
            J = self.by_first[p]
            v = w[J] + bwd[self.last[J] + 1]
            j = int(J[np.argmin(v)])
            chosen.append(j)
            p = int(self.last[j]) + 1
        return float(bwd[0]), np.array(chosen, dtype=np.int64)

    def through(self, w: np.ndarray) -> tuple[float, np.ndarray]:
        """Least total weight, and for each candidate the least weight of a cover using it."""
        if self.single:
            m, _ = self._group_min(w)
            tot = float(m.sum())
            return tot, tot - m[self.first] + w
        bwd = self.backward(w)
        fwd = np.full(self.L + 1, np.inf)
        fwd[0] = 0.0
        for q in range(1, self.L + 1):
            J = self.by_end[q]
            if J.size:
                fwd[q] = np.min(fwd[self.first[J]] + w[J])
        return float(bwd[0]), fwd[self.first] + w + bwd[self.last + 1]


def least_values(problem: Problem) -> dict[str, tuple[float, float]]:
    """For each cost, the least and the greatest total (constants included) any exact cover reaches."""
    paths = Paths(problem)
    out = {}
    for i, name in enumerate(problem.cost_names):
        col = problem.costs[:, i]
        lo = paths.best(col)[0] + problem.constants[i]
        hi = -paths.best(-col)[0] + problem.constants[i]
        out[name] = (lo, hi)
    return out


def dominance_mask(problem: Problem, G: np.ndarray | None = None) -> np.ndarray:
    """Candidates not dominated by another candidate for the same layers (on objective and ``G`` rows)."""
    if G is None:
        G, _ = problem.le_rows()
    V = np.column_stack([problem.c, G.T]) if G.size else problem.c[:, None]
    keep = np.ones(problem.n, dtype=bool)
    key = problem.first * (problem.num_layers + 1) + problem.last
    order = np.argsort(key, kind="stable")
    ks = key[order]
    bounds = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b - a < 2:
            continue
        idx = order[a:b]
        X = V[idx]
        col = X[:, 0]
        le = col[:, None] <= col[None, :]  # le[k, j]: k no worse than j everywhere
        eq = col[:, None] == col[None, :]
        for t in range(1, X.shape[1]):  # column by column: much faster than a reduction over a short axis
            col = X[:, t]
            le &= col[:, None] <= col[None, :]
            eq &= col[:, None] == col[None, :]
        s = idx.size
        earlier = np.arange(s)[:, None] < np.arange(s)[None, :]
        dom = le & (~eq | earlier)
        np.fill_diagonal(dom, False)
        keep[idx[dom.any(axis=0)]] = False
    return keep


@dataclass
class Reduction:
    """What :func:`presolve` did: the reduced problem and the bounds it proved (minimisation form)."""

    problem: Problem
    lower_bound: float = -math.inf
    upper_bound: float = math.inf
    incumbent: np.ndarray | None = None  # indices into ``problem``
    infeasible: bool = False
    lam: np.ndarray | None = None
    removed_dominated: int = 0
    removed_by_bound: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def info(self) -> dict[str, Any]:
        return {"presolve_seconds": self.seconds, "removed_dominated": self.removed_dominated,
                "removed_by_bound": self.removed_by_bound, "kept": self.problem.n,
                "lagrangian_bound": self.lower_bound, "incumbent": self.upper_bound}


def _feasible(G: np.ndarray, h: np.ndarray, x: np.ndarray, tol: np.ndarray) -> bool:
    return bool(np.all(G[:, x].sum(axis=1) <= h + tol)) if G.shape[0] else True


def lagrangian_1d(paths: Paths, c: np.ndarray, g: np.ndarray, h: float, tol: float,
                  iters: int = 60) -> tuple[float, float, list[np.ndarray]]:
    """Maximise the Lagrangian of one row ``g x <= h`` over its multiplier (bisection on the subgradient).

    Returns ``(bound, lambda, feasible covers seen)``.
    """
    feas: list[np.ndarray] = []
    v0, x0 = paths.best(c)
    if g[x0].sum() <= h + tol:
        return v0, 0.0, [x0]
    best_v, best_lam = v0, 0.0
    scale = (np.abs(c).max() + 1e-300) / (np.abs(g).max() + 1e-300)
    lo, hi = 0.0, scale
    for _ in range(200):
        v, x = paths.best(c + hi * g)
        val = v - hi * h
        if val > best_v:
            best_v, best_lam = val, hi
        if g[x].sum() <= h + tol:
            feas.append(x)
            break
        lo, hi = hi, hi * 4.0
    else:
        return best_v, best_lam, feas
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if not (lo < mid < hi):
            break
        v, x = paths.best(c + mid * g)
        val = v - mid * h
        if val > best_v:
            best_v, best_lam = val, mid
        if g[x].sum() <= h + tol:
            feas.append(x)
            hi = mid
        else:
            lo = mid
    return best_v, best_lam, feas


class LPInfeasible(Exception):
    """The LP relaxation of the ``G x <= h`` rows has no solution: nor has the problem."""


def _lp_duals(problem: Problem, G: np.ndarray, h: np.ndarray) -> np.ndarray | None:
    """Multipliers of the ``G x <= h`` rows from the LP relaxation (HiGHS), or None.

    Raises :class:`LPInfeasible` when HiGHS proves the relaxation infeasible, with every row relaxed by
    1e-8 of its scale first (so that no cover the float re-check would accept is lost): the quick proof
    that nothing fits, where the dynamic programme could search long.
    """
    try:
        import highspy
    except ImportError:  # pragma: no cover - highspy is a core dependency
        return None
    from ..solvers.highs import load_into, new_highs

    scale = np.abs(h) + np.abs(G).max(axis=1) * problem.num_layers + 1.0 if G.size else np.ones(0)
    sub = _le_problem(problem, G, h + 1e-8 * scale)
    hs = new_highs()
    load_into(hs, sub, integer=False)
    hs.run()
    st = hs.getModelStatus()
    if st == highspy.HighsModelStatus.kInfeasible:
        raise LPInfeasible("the LP relaxation is infeasible")
    if st != highspy.HighsModelStatus.kOptimal:
        return None
    duals = np.asarray(hs.getSolution().row_dual)[problem.num_layers:]
    return np.abs(duals)


def _le_problem(problem: Problem, G: np.ndarray, h: np.ndarray) -> Problem:
    from dataclasses import replace

    return replace(problem, costs=G.T.copy(), cost_names=tuple(f"r{i}" for i in range(G.shape[0])),
                   lower=np.full(G.shape[0], -np.inf), upper=h.copy(), constants=np.zeros(G.shape[0]), cuts=())


def _improve(problem: Problem, G: np.ndarray, h: np.ndarray, x: np.ndarray, tol: np.ndarray) -> np.ndarray:
    """Single swaps within a slot (same layers) that lower the objective and keep every row feasible."""
    c = problem.c
    slot = problem.first * (problem.num_layers + 1) + problem.last
    x = np.array(x, dtype=np.int64)
    xs = slot[x]
    o = np.argsort(xs)
    loc = np.searchsorted(xs[o], slot)
    loc = np.minimum(loc, xs.size - 1)
    hit = xs[o][loc] == slot
    pos = np.where(hit, o[loc], -1)
    cand = np.flatnonzero(hit)
    if cand.size == 0:
        return x
    act = G[:, x].sum(axis=1) if G.shape[0] else np.zeros(0)
    for _ in range(4 * problem.num_layers):
        cur = x[pos[cand]]
        delta = c[cand] - c[cur]
        new_act = act[:, None] + G[:, cand] - G[:, cur] if G.shape[0] else np.zeros((0, cand.size))
        feas = np.all(new_act <= (h + tol)[:, None], axis=0) if G.shape[0] else np.ones(cand.size, bool)
        delta = np.where(feas & (delta < -1e-15 * (1 + np.abs(c[cur]))), delta, np.inf)
        k = int(np.argmin(delta))
        if not math.isfinite(delta[k]):
            break
        j = cand[k]
        old = x[pos[j]]
        x[pos[j]] = j
        if G.shape[0]:
            act = act + G[:, j] - G[:, old]
    return x


def presolve(problem: Problem, incumbent: np.ndarray | None = None, *, dominance: bool = True,
             fixing: bool = True) -> Reduction:
    """Exact reduction of ``problem`` (see the module docstring); ``incumbent`` indexes ``problem``."""
    t0 = time.perf_counter()
    red = Reduction(problem)
    G, h = problem.le_rows()
    # a budget no cover can meet: certainly infeasible
    paths = Paths(problem)
    for r in range(G.shape[0]):
        if paths.best(G[r])[0] > h[r] + 1e-9 * max(1.0, abs(h[r])):
            red.infeasible = True
            red.seconds = time.perf_counter() - t0
            return red
    p = problem
    if dominance:
        keep = dominance_mask(problem, G)
        red.removed_dominated = int((~keep).sum())
        if red.removed_dominated:
            if incumbent is not None:
                incumbent = None if not keep[incumbent].all() else incumbent
            remap = np.cumsum(keep) - 1
            p = problem.subset(keep)
            G = G[:, keep]
            paths = Paths(p)
            if incumbent is not None:
                incumbent = remap[incumbent]
    c = p.c
    tol_rows = 1e-9 * np.maximum(1.0, np.abs(h))
    m = G.shape[0]
    feas: list[np.ndarray] = []
    if m == 0:
        lam = np.zeros(0)
        lb, x = paths.best(c)
        feas.append(x)
    elif m == 1:
        lb, l1, feas = lagrangian_1d(paths, c, G[0], float(h[0]), float(tol_rows[0]))
        lam = np.array([l1])
    else:
        try:
            lam = _lp_duals(p, G, h)
        except LPInfeasible:
            red.infeasible = True
            red.notes.append("the LP relaxation is infeasible")
            red.seconds = time.perf_counter() - t0
            return red
        if lam is None:
            lam = np.zeros(m)
        v, x = paths.best(c + lam @ G)
        lb = v - lam @ h
        for s in (1.0, 1.001, 1.01, 1.05, 1.2, 1.5, 2.0, 4.0, 16.0, 256.0):
            v, x = paths.best(c + (s * lam) @ G)
            if _feasible(G, h, x, tol_rows):
                feas.append(x)
                break
        if not feas:
            v, x = paths.best(c)
            if _feasible(G, h, x, tol_rows):
                feas.append(x)
    red.lam = lam
    red.lower_bound = float(lb)
    if incumbent is not None and _feasible(G, h, incumbent, tol_rows):
        feas.append(np.asarray(incumbent))
    best_x, best_v = None, math.inf
    feas = sorted(feas, key=lambda x: float(c[x].sum()))[:3]
    for x in feas:
        x = _improve(p, G, h, x, tol_rows)
        if not _feasible(G, h, x, tol_rows) or p.violations(x):
            continue
        v = float(c[x].sum())
        if v < best_v:
            best_x, best_v = x, v
    red.incumbent, red.upper_bound = best_x, best_v
    if fixing and best_x is not None and math.isfinite(lb):
        w = c + lam @ G if m else c
        tot, thr = paths.through(w)
        lam_h = float(lam @ h) if m else 0.0
        tol = 1e-9 * (1.0 + abs(best_v) + float(np.abs(lam) @ np.abs(h)) if m else 1.0 + abs(best_v))
        keep = (thr - lam_h) <= best_v + tol
        keep[best_x] = True
        red.removed_by_bound = int((~keep).sum())
        if red.removed_by_bound:
            remap = np.cumsum(keep) - 1
            p = p.subset(keep)
            red.incumbent = remap[best_x]
    red.problem = p
    red.seconds = time.perf_counter() - t0
    return red


def dp_one_budget(problem: Problem, upper_bound: float = math.inf, lam: float | None = None,
                  paths: Paths | None = None, strict_below: float | None = None,
                  answer_at: list[float] | None = None) -> Any:
    """Exact optimum of a problem with a single ``<=`` side row and no cuts (min form).

    Returns ``(chosen, value)``; ``(None, inf)`` when infeasible.  ``strict_below``
    (optional) additionally demands a row total below that value (used to walk
    a Pareto frontier).  ``answer_at`` (row budgets, each at most the problem's)
    returns a list of ``(chosen, value)``, the optimum at each of them, from one
    programme: its final states are the Pareto frontier (row total, objective),
    and the pruning is valid for every smaller budget as long as ``upper_bound``
    is at least the optimum at the smallest one.
    """
    run = _DPRun(problem, upper_bound, lam, paths, strict_below)
    if answer_at is not None:
        return [run.answer(float(b), 1e-9 * max(1.0, abs(float(b)))) for b in answer_at]
    return run.answer(run.H, run.tolh)


def dp_front(problem: Problem, paths: Paths | None = None) -> Iterator[tuple[np.ndarray, float, float]]:
    """The whole Pareto frontier of the objective (min form) against the single ``<=`` row, from one
    programme: ``(chosen, value, row total)`` per point, in decreasing row total, each the optimum at a
    budget just below the previous point's total.  No objective bound prunes it (every point is kept),
    so it costs what one :func:`dp_one_budget` without ``upper_bound`` costs, instead of one per point.
    A generator: points are traced as they are taken.
    """
    run = _DPRun(problem, math.inf, None, paths, None)
    if run.final is None or run.final[0].size == 0:
        return
    cost = run.final[0]  # the final states: cost increasing, objective strictly decreasing
    i = cost.size - 1
    while i >= 0:  # traced lazily: a caller that wants a few points pays for a few
        x = run.trace(i)
        yield x, float(run.c[x].sum()), float(cost[i])
        # the next point: the optimum strictly below this one's total, as ``strict_below`` walks it
        below = cost[i] - 1e-9 * max(1.0, abs(float(cost[i])))
        i = int(np.searchsorted(cost, below, side="right")) - 1


class _DPRun:
    """One pass of the single-row programme; its final states are the (row total, objective) frontier."""

    def __init__(self, problem: Problem, upper_bound: float, lam: float | None, paths: Paths | None,
                 strict_below: float | None):
        G, h = problem.le_rows()
        if G.shape[0] != 1 or problem.cuts:
            raise ValueError("dp_one_budget needs exactly one <= row and no cuts")
        g, H = G[0], float(h[0])
        c = problem.c
        L = problem.num_layers
        tolh = 1e-9 * max(1.0, abs(H))
        if strict_below is not None:
            H = min(H, strict_below - 1e-9 * max(1.0, abs(strict_below)))
            tolh = 0.0
        paths = paths or Paths(problem)
        if lam is None:
            _, lam, _ = lagrangian_1d(paths, c, g, H, tolh)
        mincost = paths.backward(g)
        bwd_lam = paths.backward(c + lam * g)
        bwd_c = paths.backward(c)
        tol = 1e-9 * (1.0 + (abs(upper_bound) if math.isfinite(upper_bound) else 0.0) + abs(lam * H))
        # candidates grouped by first layer, then by end position
        order = np.argsort(problem.first * (L + 1) + problem.last, kind="stable")
        fs = problem.first[order]
        starts = np.searchsorted(fs, np.arange(L + 1))
        single = problem.single_layer
        pend: list[list[tuple[np.ndarray, ...]]] = [[] for _ in range(L + 1)]
        states: list[tuple[np.ndarray, ...] | None] = [None] * (L + 1)
        states[0] = (np.zeros(1), np.zeros(1), np.array([-1]), np.array([-1]))
        for p in range(L + 1):
            if p > 0:
                if not pend[p]:
                    continue
                if len(pend[p]) == 1:
                    cost, obj, pidx, cand = pend[p][0]
                else:
                    cost, obj, pidx, cand = (np.concatenate([a[k] for a in pend[p]]) for k in range(4))
                pend[p] = []
                o = np.lexsort((obj, cost))
                cost, obj, pidx, cand = cost[o], obj[o], pidx[o], cand[o]
                run = np.minimum.accumulate(obj)
                keep = _lead(obj[1:] < run[:-1])
                states[p] = (cost[keep], obj[keep], pidx[keep], cand[keep])
            if p == L:
                break
            cs, os_, _, _ = states[p]
            J = order[starts[p]:starts[p + 1]]
            if J.size == 0 or cs.size == 0:
                continue
            ends = [p + 1] if single else np.unique(problem.last[J] + 1)
            for q in ends:
                Jq = J if single else J[problem.last[J] + 1 == q]
                nc = (cs[:, None] + g[Jq][None, :]).ravel()
                no = (os_[:, None] + c[Jq][None, :]).ravel()
                ok = nc + mincost[q] <= H + tolh
                if math.isfinite(upper_bound):
                    rem = np.maximum(bwd_c[q], bwd_lam[q] - lam * (H - nc))
                    ok &= no + rem <= upper_bound + tol
                if not ok.any():
                    continue
                pi = np.repeat(np.arange(cs.size), Jq.size)[ok]
                cj = np.tile(Jq, cs.size)[ok]
                pend[q].append((nc[ok], no[ok], pi, cj))
        self.problem, self.c, self.L, self.H, self.tolh = problem, c, L, H, tolh
        self.states, self.final = states, states[L]

    def trace(self, i: int) -> np.ndarray:
        """The chosen candidates of final state ``i``."""
        chosen = []
        q = self.L
        while q > 0:
            _, _, pi, cd = self.states[q]
            j = int(cd[i])
            chosen.append(j)
            i = int(pi[i])
            q = int(self.problem.first[j])
        chosen.reverse()
        return np.array(chosen, dtype=np.int64)

    def answer(self, Hb: float, tb: float) -> tuple[np.ndarray | None, float]:
        """The optimum at row budget ``Hb`` (tolerance ``tb``)."""
        if self.final is None or self.final[0].size == 0:
            return None, math.inf
        cost, obj = self.final[0], self.final[1]
        ok = cost <= Hb + tb
        if not ok.any():
            return None, math.inf
        x = self.trace(int(np.flatnonzero(ok)[np.argmin(obj[ok])]))
        return x, float(self.c[x].sum())
