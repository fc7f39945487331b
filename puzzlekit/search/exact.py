"""An exact specialised solver for the general case: any number of ``<=`` rows (budgets, lower
bounds as negated rows, diversity cuts), spanning candidates included.

Lagrangian-pruned dynamic programme over layer positions
----------------------------------------------------------
A *state* at position ``p`` is a partial cover of layers ``0..p-1``: its row
activities ``u`` (one per ``G x <= h`` row) and its objective ``o`` (minimisation
form).  Moving from ``p`` to ``q`` adds a candidate covering ``p..q-1``.  A state
is dropped when

* it cannot be completed within some row: ``u_k + minrest_k[q] > h_k`` (suffix
  minima of each row, i.e. least-cost covers of the remaining layers);
* its bound exceeds the target ``T``: ``o + max_t (B_t[q] - λ_t · (h - u)) > T``,
  where ``B_t[q]`` is the least ``c + λ_t G`` weight of a cover of the remaining
  layers (a Lagrangian bound on the rest given the residual budgets ``h - u``;
  ``λ_0 = 0`` gives the plain objective bound).  The multipliers are the LP duals
  of the rows (the cover polytope is integral, so their bound is the LP bound)
  and the best multiplier of each row alone;
* another state at the same position has the same activities (to 1e-12
  relative) and an objective no larger.

Every state that can still lead to an architecture of objective ``<= T`` is
kept, so the best complete state is the optimum whenever it is ``<= T``.  ``T``
is the objective of an incumbent found by the same programme with a beam (only
the ``beam`` best states by bound are kept per position), so the proof run
explores only what any proof must.  Budgets are met to the same relative
tolerance (1e-9) as the float re-verification.  When the states exceed
``max_states`` (or a proof pass, extrapolated linearly from the positions done, would: the early
estimate of a blow-up), the deadline passes or a racing solver finished first, the programme gives
up and says so: callers then fall back to (or wait for) a MIP backend.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .presolve import LPInfeasible, Paths, _improve, _lead, _lp_duals, lagrangian_1d
from .problem import Problem

__all__ = ["ExactResult", "solve_exact", "multipliers"]


@dataclass
class ExactResult:
    """Outcome of :func:`solve_exact` (minimisation form; indices into the problem given)."""

    status: str  # "optimal", "infeasible" or "gave_up"
    chosen: np.ndarray | None = None
    value: float = math.inf
    lower_bound: float = -math.inf
    incumbent: np.ndarray | None = None  # best feasible seen (also when it gave up)
    incumbent_value: float = math.inf
    states: int = 0
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


class _GaveUp(Exception):
    pass


class _Limits:
    """When a pass must stop: more than ``max_states`` states (or a projection past it), the deadline, or
    ``stop`` set (another solver proved the answer first)."""

    def __init__(self, max_states: int, deadline: float | None, stop: Any = None, on_hard: Any = None):
        self.max_states, self.deadline, self.stop, self.on_hard = max_states, deadline, stop, on_hard

    def hard(self, why: str) -> None:
        """Tell the caller (once) that this looks hard; it answers True to stop the programme here."""
        if self.on_hard is not None:
            f, self.on_hard = self.on_hard, None
            if f(why):
                raise _GaveUp(f"handed over: {why}")

    def check(self, p: int, L: int, total: int, proof: bool) -> None:
        if total > self.max_states:
            raise _GaveUp(f"more than {self.max_states} states")
        if proof and self.on_hard is not None and p >= max(4, L // 8) and 8 * total * L > self.max_states * p:
            self.hard(f"projected past {self.max_states // 8} states")
        # the early estimate: a proof pass whose states so far, extrapolated linearly over the remaining
        # positions, pass the cap will pass it (counts grow with depth until the bounds bite near the end)
        if proof and p >= max(4, L // 8) and total * L > self.max_states * p:
            raise _GaveUp(f"projected past {self.max_states} states ({total} after {p} of {L} layers)")
        self.poll()

    def poll(self) -> None:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise _GaveUp("time limit")
        if self.stop is not None and self.stop.is_set():
            raise _GaveUp("stopped (another solver finished first)")


def multipliers(problem: Problem, G: np.ndarray, h: np.ndarray, paths: Paths,
                lp_duals: np.ndarray | None = None) -> tuple[list[np.ndarray], float]:
    """Multiplier vectors for the bounds (LP duals first) and the best Lagrangian bound among them.

    ``lp_duals`` (one per row of ``G``, e.g. from the front end's presolve of the same rows) saves the LP
    solve; any non-negative multipliers give valid bounds, so they only affect speed.
    """
    c = problem.c
    m = G.shape[0]
    lams: list[np.ndarray] = []
    if m == 0:
        return lams, paths.best(c)[0]
    tol = 1e-9 * np.maximum(1.0, np.abs(h))
    if m == 1:
        lb, l1, _ = lagrangian_1d(paths, c, G[0], float(h[0]), float(tol[0]))
        return [np.array([l1])], lb
    lp = (np.maximum(np.asarray(lp_duals, dtype=float), 0.0) if lp_duals is not None and len(lp_duals) == m
          else _lp_duals(problem, G, h))
    if lp is not None:
        lams.append(lp)
    for r in range(m):
        if not np.any(G[r]):
            continue
        _, l1, _ = lagrangian_1d(paths, c, G[r], float(h[r]), float(tol[r]), iters=40)
        if l1 > 0:
            v = np.zeros(m)
            v[r] = l1
            lams.append(v)
    lb = paths.best(c)[0]
    for lam in lams:
        lb = max(lb, paths.best(c + lam @ G)[0] - float(lam @ h))
    return lams, lb


def _count_table(problem: Problem, w: np.ndarray, a: np.ndarray, R: int) -> np.ndarray:
    """``T[q, k]``: least ``w`` weight of a cover of layers ``q..L-1`` whose integer row ``a`` totals at most ``k``.

    An exact resource-constrained suffix table (``k = 0..R``); ``inf`` where no such cover exists.
    """
    L = problem.num_layers
    T = np.full((L + 1, R + 1), np.inf)
    T[L, :] = 0.0
    order = np.argsort(problem.first, kind="stable")
    starts = np.searchsorted(problem.first[order], np.arange(L + 1))
    for q in range(L - 1, -1, -1):
        row = T[q]
        for j in order[starts[q]:starts[q + 1]]:
            aj = int(a[j])
            if aj > R:
                continue
            nxt = T[int(problem.last[j]) + 1]
            cand = w[j] + nxt[: R + 1 - aj]
            np.minimum(row[aj:], cand, out=row[aj:])
    return T


def _resource_tables(problem: Problem, G: np.ndarray, h: np.ndarray, tolh: np.ndarray,
                     lams: list[np.ndarray], buckets: int = 8192,
                     scales: tuple[float, ...] = (0.7, 1.0, 1.4), cache: dict | None = None) -> list[tuple]:
    """Per row ``r``: a suffix table treating row ``r`` exactly (up to buckets) and the others by multipliers.

    Row ``r`` is shifted per layer to be non-negative (every exact cover pays
    the same total shift ``S[L]``), divided into buckets of width ``delta`` and
    rounded *down*, so any completion feasible for the row is feasible in the
    table: ``T[q, k]`` (least ``c + λ G`` weight, ``λ_r = 0``, of a cover of
    ``q..L-1`` using at most ``k`` buckets) is a valid bound.  Rows with small
    non-negative integer coefficients (diversity cuts) get ``delta = 1``:
    exact.  ``cache`` (a dict kept by the caller across problems with the same candidates and rows, e.g.
    the points of a Pareto front) reuses a table built for a larger budget: ``T[q, k]`` does not depend
    on the budget, only its bucket count ``R`` does.
    """
    L, m = problem.num_layers, G.shape[0]
    if m < 2:
        return []  # one row: the Lagrangian bound of that row is as good, and cheaper
    c = problem.c
    span = problem.span.astype(float)
    out = []
    lam_sets = [lams[0] * f for f in scales] if lams else [np.zeros(m)]
    # at most _TABLE_BYTES for the bucketed tables together (fewer buckets on deep or many-row problems)
    real_rows = sum(1 for r in range(m) if np.any(G[r]) and not np.all(G[r] == np.round(G[r])))
    buckets = int(max(256, min(buckets, _TABLE_BYTES // (8 * (L + 1) * max(1, real_rows * len(lam_sets))))))
    for r in range(m):
        g = G[r]
        if not np.any(g):
            continue
        need = np.maximum(0.0, -g) / span  # per-layer shift making every candidate's shifted cost >= 0
        s_layer = np.zeros(L)
        np.maximum.at(s_layer, problem.first, need) if problem.single_layer else None
        if not problem.single_layer:
            for j in np.flatnonzero(need > 0):
                seg = slice(int(problem.first[j]), int(problem.last[j]) + 1)
                s_layer[seg] = np.maximum(s_layer[seg], need[j])
        S = np.concatenate([[0.0], np.cumsum(s_layer)])
        gs = g + (S[problem.last + 1] - S[problem.first])
        Hs = float(h[r] + tolh[r] + S[L])
        if Hs <= 0:
            continue
        integral = np.all(gs == np.round(gs)) and Hs <= 8 * L
        lam_list = (np.zeros(m), lam_sets[len(lam_sets) // 2]) if integral else lam_sets
        hit = None if cache is None else cache.get((r, integral, tuple(np.concatenate(lam_list).tolist())))
        if hit is not None and Hs <= hit[0]:
            delta = hit[1]
            R = int(math.floor(Hs / delta + 1e-6))
            for lam, T in hit[2]:
                out.append((lam, float(lam @ h), r, delta, S, Hs, R, T))
            continue
        delta = 1.0 if integral else Hs / buckets
        a = np.floor(gs / delta + (0.0 if integral else -1e-7)).clip(0).astype(np.int64)
        R = int(math.floor(Hs / delta + 1e-6))
        built = []
        for lam in lam_list:
            lam = lam.copy()
            lam[r] = 0.0
            T = _count_table(problem, c + lam @ G, a, R)
            out.append((lam, float(lam @ h), r, delta, S, Hs, R, T))
            built.append((lam, T))
        if cache is not None:
            cache[(r, integral, tuple(np.concatenate(lam_list).tolist()))] = (Hs, delta, built)
    return out


def _pareto_on_row(keys: np.ndarray, Ob: np.ndarray, r: int, idx: np.ndarray) -> np.ndarray:
    """Drop states dominated within their group of equal activities on every row but ``r``.

    Within a group, sorted by row ``r`` then objective, a state survives only if
    its objective is strictly below every earlier one (a segmented running
    minimum, computed on integer ranks with groups laid out in decreasing bands).
    """
    others = np.delete(keys, r, axis=1)
    o = np.lexsort((Ob, keys[:, r], *others.T[::-1]))
    if others.shape[1]:
        so = others[o]
        g = np.cumsum(_lead(np.any(so[1:] != so[:-1], axis=1))) - 1
    else:
        g = np.zeros(o.size, dtype=np.int64)
    rank = np.unique(Ob, return_inverse=True)[1].reshape(-1)[o].astype(np.int64)
    n = o.size
    val = (int(g[-1]) - g) * (n + 1) + rank
    run = np.minimum.accumulate(val)
    keep = _lead(val[1:] < run[:-1])
    return idx[np.sort(o[keep])]


_PAIRS = 1 << 20  # (state, candidate) pairs expanded at once
_LAZY = 50_000  # states a proof may use before the resource tables are built
_TABLE_BYTES = 96 << 20  # the bucketed resource tables together


def _run(problem: Problem, G: np.ndarray, h: np.ndarray, paths: Paths, bounds: list[tuple[np.ndarray, np.ndarray]],
         minrest: np.ndarray, target: float, beam: int | None, limits: _Limits, counts: list[tuple] = (),
         collect: list | None = None) -> tuple[np.ndarray | None, float, int]:
    """One pass of the programme; returns ``(chosen, value, states kept)``; raises _GaveUp."""
    L, m = problem.num_layers, G.shape[0]
    c = problem.c
    Gt = np.ascontiguousarray(G.T)  # n x m
    tolh = 1e-9 * np.maximum(1.0, np.abs(h))
    tol = 1e-9 * (1.0 + (abs(target) if math.isfinite(target) else 0.0))
    lam_mat = np.array([lam for lam, _ in bounds]) if bounds else np.zeros((0, m))  # t x m
    lam_h = lam_mat @ h if bounds else np.zeros(0)
    bw = np.array([b for _, b in bounds]) if bounds else np.zeros((0, L + 1))  # t x (L+1)
    key_scale = 1e-12 * np.maximum(1.0, np.abs(h)) if m else np.ones(0)
    order = np.argsort(problem.first * (L + 1) + problem.last, kind="stable")
    starts = np.searchsorted(problem.first[order], np.arange(L + 1))
    single = problem.single_layer
    pend: list[list[tuple[np.ndarray, ...]]] = [[] for _ in range(L + 1)]
    back: list[tuple[np.ndarray, np.ndarray] | None] = [None] * (L + 1)
    U = np.zeros((1, m))
    Ob = np.zeros(1)
    back[0] = (np.array([-1]), np.array([-1]))
    total = 1
    for p in range(L + 1):
        if p > 0:
            if not pend[p]:
                continue
            if len(pend[p]) == 1:
                U, Ob, pi, cj = pend[p][0]
            else:
                U, Ob, pi, cj = (np.concatenate([a[k] for a in pend[p]]) for k in range(4))
            pend[p] = []
            # merge equal activities (keep the least objective)
            if m:
                keys = np.round(U / key_scale)
                o = np.lexsort((Ob, *keys.T[::-1]))
                ks = keys[o]
                new = _lead(np.any(ks[1:] != ks[:-1], axis=1))
                o = o[new]
            else:
                o = np.array([int(np.argmin(Ob))])
            if m and o.size > 128 and beam is None:  # (the beam pass is a heuristic: dedupe only)
                for r in ((m - 1, m - 2) if m > 1 else (0,)):
                    o = _pareto_on_row(keys[o], Ob[o], r, o)
            if beam is not None and o.size > beam:
                bnd = Ob[o] + np.max(bw[:, p][:, None] - lam_h[:, None] + lam_mat @ U[o].T, axis=0)
                o = o[np.argpartition(bnd, beam)[:beam]]
            U, Ob = U[o], Ob[o]
            back[p] = (pi[o], cj[o])
            total += o.size
        if p == L:
            break
        limits.check(p, L, total, beam is None)
        J = order[starts[p]:starts[p + 1]]
        if J.size == 0 or Ob.size == 0:
            continue
        ends = [p + 1] if single else np.unique(problem.last[J] + 1)
        for q in ends:
            Jq = J if single else J[problem.last[J] + 1 == q]
            cJ, GJ = c[Jq], Gt[Jq]
            chunk = max(1, _PAIRS // (Jq.size * max(1, m)))
            for a0 in range(0, Ob.size, chunk):  # bounded memory: at most _PAIRS pairs at a time
                if a0:
                    limits.poll()
                a1 = min(Ob.size, a0 + chunk)
                # every (state, candidate) pair, flat; each test keeps the survivors only
                NO = (Ob[a0:a1, None] + cJ[None, :]).ravel()
                idx = np.arange(NO.size)
                NU = (U[a0:a1, None, :] + GJ[None, :, :]).reshape(NO.size, m)
                if m:
                    keep = np.all(NU + minrest[:, q] <= h + tolh, axis=1)
                    idx, NO, NU = idx[keep], NO[keep], NU[keep]
                if math.isfinite(target):
                    lim = target + tol
                    keep = NO + bw[0, q] <= lim  # the plain objective bound on the rest
                    idx, NO, NU = idx[keep], NO[keep], NU[keep]
                    for t in range(1, lam_mat.shape[0]):  # Lagrangian bounds on the rest
                        keep = NO + (bw[t, q] - lam_h[t]) + NU @ lam_mat[t] <= lim
                        idx, NO, NU = idx[keep], NO[keep], NU[keep]
                    for lam, lh, r, delta, S, Hs, R, T in counts:  # resource tables
                        # the residual's bucket, rounded up (the table is non-increasing: still a bound)
                        left = np.floor((Hs - S[q] - NU[:, r]) / delta + 1e-6).astype(np.int64)
                        np.minimum(left, R, out=left)
                        np.maximum(left, 0, out=left)  # (np.clip costs far more per call)
                        keep = NO + T[q][left] - lh + NU @ lam <= lim
                        idx, NO, NU = idx[keep], NO[keep], NU[keep]
                if idx.size:
                    si, jj = np.divmod(idx, Jq.size)
                    pend[q].append((NU, NO, si + a0, Jq[jj]))
    if back[L] is None or Ob.size == 0:
        return None, math.inf, total
    if collect is not None:  # every final state (row activities, objective) and the back pointers
        collect.append((U, Ob, back))
    i = int(np.argmin(Ob))
    return trace(problem, back, i), float(Ob[i]), total


def trace(problem: Problem, back: list, i: int) -> np.ndarray:
    """The candidates of final state ``i`` (through the back pointers of a pass)."""
    chosen = []
    q = problem.num_layers
    while q > 0:
        pi, cj = back[q]
        j = int(cj[i])
        chosen.append(j)
        i = int(pi[i])
        q = int(problem.first[j])
    chosen.reverse()
    return np.array(chosen, dtype=np.int64)



def solve_exact(
    problem: Problem,
    *,
    incumbent: np.ndarray | None = None,
    beam: int = 300,
    max_states: int = 4_000_000,
    time_limit: float | None = None,
    lower_bound: float | None = None,
    lp_duals: np.ndarray | None = None,
    stop: Any = None,
    on_hard: Any = None,
    cache: dict | None = None,
    step: float | None = None,
    collect_below: float | None = None,
) -> ExactResult:
    """The proven optimum of ``problem`` by the Lagrangian-pruned programme (see the module docstring).

    ``incumbent`` (indices into ``problem``) seeds the target; ``lower_bound``
    (minimisation form) is a known bound on the optimum, e.g. the previous
    solution's objective in a diverse top-k (more cuts never improve it), and
    ``lp_duals`` multipliers of the rows; both only make it faster.  ``stop`` (an object with
    ``is_set()``, e.g. a :class:`threading.Event`) is polled once per layer position: when set the
    programme gives up (a racing solver finished first).  ``on_hard(why)`` (optional) is called once
    when the problem looks hard: the beam found no feasible architecture (nothing to prune by: likely
    infeasible or nearly so), or a proof pass is projected past an eighth of ``max_states``; when it
    returns True the programme gives up at once (the caller hands the problem over).  ``cache`` (a dict
    the caller keeps) reuses the resource tables across problems that differ only in smaller budgets.
    ``step`` (with ``lower_bound``): first try proofs at ``lower_bound + step·4^k``, k = 0..2, before the
    beam (the optimum is expected just above the bound).  ``collect_below`` (minimisation form): no
    search for the optimum; one pass keeps every state that can reach an objective at most this, and
    ``info["final"]`` holds the final states ``(activities, objectives, back pointers)`` (status
    ``"collected"``; :func:`trace` gives a state's candidates): what a Pareto front needs.  Returns status
    ``"optimal"``, ``"infeasible"`` (proven: no state reaches the last layer) or
    ``"gave_up"`` (more than ``max_states`` states, or a proof pass projected past them; ``time_limit``
    seconds passed; or ``stop``), with the best feasible architecture seen and the Lagrangian lower bound.
    """
    t0 = time.perf_counter()
    limits = _Limits(max_states, None if time_limit is None else t0 + time_limit, stop, on_hard)
    res = ExactResult("gave_up")
    G, h = problem.le_rows()
    m = G.shape[0]
    L = problem.num_layers
    c = problem.c
    paths = Paths(problem)
    tolh = 1e-9 * np.maximum(1.0, np.abs(h))
    minrest = np.array([paths.backward(G[r]) for r in range(m)]) if m else np.zeros((0, L + 1))
    if m and np.any(minrest[:, 0] > h + tolh):
        res.status, res.seconds = "infeasible", time.perf_counter() - t0
        res.info["reason"] = "a row cannot be met by any cover"
        return res
    try:
        lams, lb = multipliers(problem, G, h, paths, lp_duals)
    except LPInfeasible:
        res.status, res.seconds = "infeasible", time.perf_counter() - t0
        res.info["reason"] = "the LP relaxation is infeasible"
        return res
    if lower_bound is not None and math.isfinite(lower_bound):
        lb = max(lb, float(lower_bound) - 1e-12 * (1.0 + abs(lower_bound)))
    res.lower_bound = lb
    bounds = [(np.zeros(m), paths.backward(c))] + [(lam, paths.backward(c + lam @ G)) for lam in lams]
    # the resource tables cost about n x 8192 operations per row and multiplier set: built only when a proof
    # needs more than _LAZY states without them (most do not), or when the caller's cache already has them
    counts: list[tuple] | None = _resource_tables(problem, G, h, tolh, lams, cache=cache) if cache else None
    lazy = _Limits(min(max_states, _LAZY), limits.deadline, stop)
    ub, x_inc = math.inf, None

    def prove(target: float) -> tuple[np.ndarray | None, float, int]:
        nonlocal counts
        if counts is None:
            try:
                return _run(problem, G, h, paths, bounds, minrest, target, None, lazy, [])
            except _GaveUp as e:
                if not str(e).startswith(("more than", "projected")):
                    raise
            counts = _resource_tables(problem, G, h, tolh, lams, cache=cache)
        return _run(problem, G, h, paths, bounds, minrest, target, None, limits, counts)

    def consider(x: np.ndarray | None) -> None:
        nonlocal ub, x_inc
        if x is None:
            return
        x = _improve(problem, G, h, np.asarray(x, dtype=np.int64), tolh) if m else np.asarray(x, dtype=np.int64)
        if problem.violations(x):
            return
        v = float(c[x].sum())
        if v < ub:
            ub, x_inc = v, x

    if incumbent is not None:
        consider(np.asarray(incumbent, dtype=np.int64))
    # a cheap incumbent from the Lagrangian covers
    for lam in lams:
        for s in (1.0, 1.01, 1.1, 1.5, 3.0):
            x = paths.best(c + (s * lam) @ G)[1]
            if not m or np.all(G[:, x].sum(axis=1) <= h + tolh):
                consider(x)
                break
    res.info["multipliers"] = len(lams)
    if collect_below is not None:
        buf: list = []
        try:
            res.states = _run(problem, G, h, paths, bounds, minrest, float(collect_below), None, limits,
                              _resource_tables(problem, G, h, tolh, lams, cache=cache) if cache is not None else [],
                              buf)[2]
        except _GaveUp as e:
            res.info["reason"] = str(e)
            res.seconds = time.perf_counter() - t0
            return res
        res.status, res.seconds = "collected", time.perf_counter() - t0
        res.info["final"] = buf[0] if buf else None
        return res
    try:
        x, found = None, False
        if step is not None and step > 0 and math.isfinite(lb):
            # proofs at targets just above the known bound (e.g. the previous point of a front): when the
            # optimum is that close, a small search proves it and the beam is not needed
            for k in range(3):
                target = lb + step * 4.0**k
                if target >= ub:
                    break
                x, v, n = prove(target)
                res.states += n
                res.info["guesses"] = k + 1
                if x is not None and v <= target + 1e-9 * (1.0 + abs(target)):
                    found = True
                    break
        # a beam pass: a good incumbent quickly (not a proof)
        width = beam
        for _ in range(0 if found else 3):
            t1 = time.perf_counter()
            x, v, n = _run(problem, G, h, paths, bounds, minrest, ub, width, limits, counts or [])
            res.states += n
            consider(x)
            res.info.setdefault("beam_seconds", 0.0)
            res.info["beam_seconds"] += time.perf_counter() - t1
            if x_inc is not None:
                break
            limits.hard("the beam found no feasible architecture")
            width *= 8
        res.incumbent, res.incumbent_value = x_inc, ub
        res.info["beam_found"] = x_inc is not None or found
        # the proof: every state that can still reach the target; targets rise from the bound to the incumbent,
        # and the first run that finds an architecture within its target has found the optimum
        if found:
            targets = []
        elif math.isfinite(ub) and math.isfinite(lb) and ub > lb:
            targets = [lb + (ub - lb) / 8, ub]
        else:
            targets = [ub]
        for target in targets:
            x, v, n = prove(target)
            res.states += n
            res.info["targets_tried"] = res.info.get("targets_tried", 0) + 1
            if x is not None and v <= target + 1e-9 * (1.0 + abs(target)):
                break
    except _GaveUp as e:
        res.incumbent, res.incumbent_value = x_inc, ub
        res.info["reason"] = str(e)
        res.seconds = time.perf_counter() - t0
        return res
    if x is not None and v <= ub:
        res.chosen, res.value = x, v
    elif x_inc is not None:
        res.chosen, res.value = x_inc, ub
    res.info["resource_tables"] = len(counts or [])
    if res.chosen is None:
        res.status = "infeasible"
        res.info["reason"] = "no partial cover reaches the last layer within every row"
    else:
        if problem.violations(res.chosen):  # the programme's tolerance is the verification's; never expected
            raise RuntimeError("exact programme produced an infeasible cover")
        res.status = "optimal"
        res.incumbent, res.incumbent_value = res.chosen, res.value
    res.seconds = time.perf_counter() - t0
    return res
