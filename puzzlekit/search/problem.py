"""The search problem in plain numpy arrays that no solver owns.

Binary ``x[j]`` picks candidate ``j``, which covers parent layers
``first[j]..last[j]``.  Constraints:

* cover: every layer is covered by exactly one chosen candidate;
* budgets: ``lower[k] <= constants[k] + sum_j costs[j, k] x[j] <= upper[k]``
  for every cost ``k`` (``constants`` hold non-block costs such as the
  embeddings and the LM head);
* cuts: ``sum_j coef[j] x[j] <= rhs`` (diversity cuts of the top-k search).

Objective: minimise (or maximise) ``sum_j objective[j] x[j]``.  Backends see
the minimisation form :attr:`Problem.c` and the matrices of :meth:`matrix`;
every answer is turned into a :class:`~puzzlekit.search.Solution` by
:meth:`Problem.make_solution`, which re-verifies it in floating point.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from ..errors import ConfigError, SolverError
from .solution import Choice, Solution, Status

__all__ = ["Problem", "Cut", "FEAS_TOL"]

#: Relative tolerance of the float re-verification of budgets and cuts.
FEAS_TOL = 1e-9


@dataclass(frozen=True, eq=False)
class Cut:
    """A linear cut ``sum coef[i] * x[index[i]] <= rhs`` (e.g. a diversity cut)."""

    index: np.ndarray
    coef: np.ndarray
    rhs: float
    name: str = "cut"


def _f64(a: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    arr = np.asarray(a, dtype=float)
    if arr.shape != shape:
        raise ConfigError(f"problem: {what} must have shape {shape}, got {arr.shape}")
    return arr


_LIB_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _library_layout(library: Any) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], np.ndarray, list[str]]:
    """``first``, ``last``, block keys, index of each candidate's key in the unique keys, unique keys.

    Cached per library while its candidates (and their blocks and spans) are the
    same objects, so repeated searches on one library do not rebuild block keys.
    """
    cands = library.candidates
    sig = [(c, c.block, c.first, c.last) for c in cands]
    try:
        hit = _LIB_CACHE.get(library)
    except TypeError:  # an unhashable library: no cache
        hit = None
    if hit is not None and len(hit[0]) == len(sig) and all(
            a[0] is b[0] and a[1] is b[1] and a[2] == b[2] and a[3] == b[3] for a, b in zip(hit[0], sig)):
        return hit[1]
    keys = tuple(c.block.key for c in cands)
    uniq = list(dict.fromkeys(keys))
    pos = {k: i for i, k in enumerate(uniq)}
    out = (np.array([c.first for c in cands], dtype=np.int64), np.array([c.last for c in cands], dtype=np.int64),
           keys, np.array([pos[k] for k in keys], dtype=np.int64), uniq)
    try:
        _LIB_CACHE[library] = (sig, out)
    except TypeError:
        pass
    return out


def _cost_columns(library: Any, names: Sequence[str], scenario: Any, inv: np.ndarray, uniq: list[str]) -> np.ndarray:
    """``library.cost_matrix(names, scenario)``, read once per distinct block (its errors when anything is missing)."""
    try:
        table = library.costs.get(library.resolve_scenario(scenario), {})
        rows = np.array([[float(table[k][n]) for n in names] for k in uniq], dtype=float)
    except (KeyError, TypeError, ValueError, AttributeError):
        return library.cost_matrix(names, scenario)
    return rows[inv]


@dataclass(frozen=True, eq=False)
class Problem:
    """One candidate per layer, an objective, budgets on costs, cuts: the MIP in arrays.

    Build it with :meth:`from_library` (or directly, for problems that do not
    come from a block library).  Arrays are read-only; derive new problems with
    :meth:`with_budgets`, :meth:`with_cut` or :meth:`subset`.
    """

    num_layers: int
    first: np.ndarray
    last: np.ndarray
    objective: np.ndarray
    costs: np.ndarray
    cost_names: tuple[str, ...] = ()
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    constants: np.ndarray | None = None
    maximize: bool = False
    objective_name: str = "objective"
    labels: tuple[str, ...] = ()
    origin: np.ndarray | None = None
    cuts: tuple[Cut, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        L = self.num_layers
        if isinstance(L, bool) or not isinstance(L, (int, np.integer)) or L <= 0:
            raise ConfigError(f"problem: num_layers must be a positive integer, got {L!r}")
        first = np.asarray(self.first, dtype=np.int64)
        n = first.shape[0] if first.ndim == 1 else -1
        if n <= 0:
            raise ConfigError("problem: needs at least one candidate (first must be a non-empty 1-D array)")
        last = np.asarray(self.last, dtype=np.int64)
        if last.shape != (n,):
            raise ConfigError(f"problem: last must have shape ({n},), got {last.shape}")
        if np.any(first < 0) or np.any(last < first) or np.any(last >= L):
            j = int(np.flatnonzero((first < 0) | (last < first) | (last >= L))[0])
            raise ConfigError(f"problem: candidate {j} covers layers {first[j]}..{last[j]}, outside 0..{L - 1}")
        obj = _f64(self.objective, (n,), "objective")
        if not np.all(np.isfinite(obj)):
            j = int(np.flatnonzero(~np.isfinite(obj))[0])
            raise ConfigError(
                f"problem: objective {self.objective_name!r} of candidate {j}"
                + (f" ({self.labels[j]})" if self.labels else "")
                + f" is {obj[j]}; fix the score, or drop such candidates (BlockLibrary.validate(drop_nonfinite=True), "
                "CLI --drop-nonfinite)"
            )
        costs = np.asarray(self.costs, dtype=float)
        if costs.ndim == 1 and n and costs.shape[0] == n:
            costs = costs[:, None]
        if costs.size == 0:
            costs = np.zeros((n, 0))
        if costs.ndim != 2 or costs.shape[0] != n:
            raise ConfigError(f"problem: costs must have shape ({n}, number of costs), got {costs.shape}")
        k = costs.shape[1]
        if not np.all(np.isfinite(costs)):
            j, c = map(int, np.argwhere(~np.isfinite(costs))[0])
            raise ConfigError(f"problem: cost {c} of candidate {j} is {costs[j, c]}; costs must be finite")
        names = tuple(self.cost_names) or tuple(f"cost{i}" for i in range(k))
        if len(names) != k:
            raise ConfigError(f"problem: {k} costs but {len(names)} cost_names")
        lower = np.full(k, -np.inf) if self.lower is None else _f64(self.lower, (k,), "lower")
        upper = np.full(k, np.inf) if self.upper is None else _f64(self.upper, (k,), "upper")
        const = np.zeros(k) if self.constants is None else _f64(self.constants, (k,), "constants")
        for i in range(k):
            if np.isnan(lower[i]) or np.isnan(upper[i]) or lower[i] > upper[i]:
                raise ConfigError(f"problem: budget {names[i]!r} has lower {lower[i]} > upper {upper[i]} (or NaN)")
        if not np.all(np.isfinite(const)):
            raise ConfigError("problem: non-block constants must be finite")
        covered = np.zeros(L + 1, dtype=np.int64)
        np.add.at(covered, first, 1)
        np.add.at(covered, last + 1, -1)
        bare = np.flatnonzero(np.cumsum(covered)[:L] == 0)
        if bare.size:
            raise ConfigError(f"problem: layer {int(bare[0])} has no candidate; every layer needs at least one")
        labels = tuple(self.labels) if self.labels else tuple(f"c{j}" for j in range(n))
        if len(labels) != n:
            raise ConfigError(f"problem: {n} candidates but {len(labels)} labels")
        origin = np.arange(n) if self.origin is None else np.asarray(self.origin, dtype=np.int64)
        for name, arr in (("first", first), ("last", last), ("objective", obj), ("costs", costs),
                          ("lower", lower), ("upper", upper), ("constants", const), ("origin", origin)):
            arr = np.array(arr, copy=True)
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "num_layers", int(L))
        object.__setattr__(self, "cost_names", names)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "cuts", tuple(self.cuts))

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_library(
        cls,
        library: Any,
        objective: str,
        budgets: Mapping[str, Any] | None = None,
        *,
        maximize: bool = False,
        scenario: Any = None,
        constants: Mapping[str, float] | None = None,
        extra_costs: Mapping[str, Sequence[float]] | None = None,
        allowed: np.ndarray | None = None,
    ) -> Problem:
        """Build from a :class:`~puzzlekit.BlockLibrary`.

        ``budgets`` maps a cost name to an upper bound, a ``(lower, upper)``
        pair (``None`` for no bound) or a string ``"<=80000"`` / ``">=5"``.
        Cost columns come from the library under ``scenario`` (default: its
        default scenario) or from ``extra_costs`` (one value per candidate,
        e.g. translated human constraints).  ``constants`` are non-block costs
        added to every architecture's total (subtracted from the budget); a
        constant for a cost that has no budget adds that cost as an unbounded
        column, so the solution's totals include it.  (Here ``constants`` are
        used as given; :func:`puzzlekit.search.build_problem` fills them from the
        library's non-block costs when none are given.)
        ``allowed`` (bool per candidate) removes candidates up front.
        """
        from .constraints import parse_bound

        budgets = dict(budgets or {})
        extra_costs = dict(extra_costs or {})
        constants = {str(k): v for k, v in (constants or {}).items()}
        names = list(dict.fromkeys([*budgets, *extra_costs]))
        # a constant for a cost without a budget (e.g. the whole non-block record of a profile) adds that cost
        # as a column with no bound, so the solution reports its total
        unbudgeted = [n for n in constants if n not in names]
        if unbudgeted:
            have = set(library.cost_names_for(scenario)) if library.scenarios else set()
            unknown = [n for n in unbudgeted if n not in have]
            if unknown:
                sc = library.resolve_scenario(scenario) if library.scenarios else None
                raise ConfigError(
                    f"constants given for {sorted(unknown)}, which are neither budgets nor costs of every block "
                    + (f"under scenario {sc!r}" if sc else "(the library has no scenario)")
                    + f"; budgets: {names}, block costs: {sorted(have)}")
            names += unbudgeted
        lib_names = [n for n in names if n not in extra_costs]
        obj = library.metric_vector(objective)
        first, last, labels, inv, uniq = _library_layout(library)
        cols = []
        if lib_names:
            cm = _cost_columns(library, lib_names, scenario, inv, uniq)
            lib_cols = {n: cm[:, i] for i, n in enumerate(lib_names)}
        else:
            lib_cols = {}
        for n in names:
            if n in extra_costs:
                v = np.asarray(extra_costs[n], dtype=float)
                if v.shape != obj.shape:
                    raise ConfigError(f"extra cost {n!r} needs one value per candidate ({obj.shape[0]}), got {v.shape}")
                cols.append(v)
            else:
                cols.append(lib_cols[n])
        costs = np.column_stack(cols) if cols else np.zeros((obj.shape[0], 0))
        lo = np.full(len(names), -np.inf)
        hi = np.full(len(names), np.inf)
        for i, n in enumerate(names):
            if n in budgets:
                lo[i], hi[i] = parse_bound(budgets[n], n)
        const = np.array([float(constants.get(n, 0.0)) for n in names])
        p = cls(library.num_layers, first, last, obj, costs, tuple(names), lo, hi, const,
                maximize=maximize, objective_name=objective, labels=labels)
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=bool)
            if allowed.shape != obj.shape:
                raise ConfigError("allowed must hold one bool per candidate")
            p = p.subset(allowed, why="per-layer rules")
        return p

    # ---- views -------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        """Number of candidates."""
        return int(self.first.shape[0])

    @property
    def sense(self) -> str:
        return "max" if self.maximize else "min"

    @cached_property
    def c(self) -> np.ndarray:
        """The objective in minimisation form (negated when maximising)."""
        v = -self.objective if self.maximize else self.objective.copy()
        v.setflags(write=False)
        return v

    @cached_property
    def span(self) -> np.ndarray:
        v = self.last - self.first + 1
        v.setflags(write=False)
        return v

    @cached_property
    def single_layer(self) -> bool:
        """True when every candidate covers exactly one layer."""
        return bool(np.all(self.first == self.last))

    @cached_property
    def block_lower(self) -> np.ndarray:
        """Lower budgets on the block costs alone (the constants subtracted)."""
        return self.lower - self.constants

    @cached_property
    def block_upper(self) -> np.ndarray:
        """Upper budgets on the block costs alone (the constants subtracted)."""
        return self.upper - self.constants

    @cached_property
    def budget_rows(self) -> list[int]:
        """Indices of costs with at least one finite bound."""
        return [i for i in range(len(self.cost_names))
                if math.isfinite(self.lower[i]) or math.isfinite(self.upper[i])]

    def side_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """Budget and cut rows as ``(G, lo, hi, names)``, ``lo <= G x <= hi`` (G dense, m x n)."""
        rows, lo, hi, names = [], [], [], []
        for i in self.budget_rows:
            rows.append(self.costs[:, i])
            lo.append(self.block_lower[i])
            hi.append(self.block_upper[i])
            names.append(self.cost_names[i])
        for cut in self.cuts:
            r = np.zeros(self.n)
            r[cut.index] = cut.coef
            rows.append(r)
            lo.append(-np.inf)
            hi.append(cut.rhs)
            names.append(cut.name)
        G = np.vstack(rows) if rows else np.zeros((0, self.n))
        return G, np.array(lo, dtype=float), np.array(hi, dtype=float), names

    def le_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """All side rows in ``G x <= h`` form (a lower bound becomes ``-G x <= -lo``)."""
        G, lo, hi, _ = self.side_rows()
        rows, rhs = [], []
        for r in range(G.shape[0]):
            if math.isfinite(hi[r]):
                rows.append(G[r])
                rhs.append(hi[r])
            if math.isfinite(lo[r]):
                rows.append(-G[r])
                rhs.append(-lo[r])
        return (np.vstack(rows) if rows else np.zeros((0, self.n))), np.array(rhs, dtype=float)

    @cached_property
    def layer_groups(self) -> list[np.ndarray]:
        """For each layer, the candidates covering it (the cover rows)."""
        order = np.argsort(self.first, kind="stable")
        if self.single_layer:
            bounds = np.searchsorted(self.first[order], np.arange(self.num_layers + 1))
            return [order[bounds[i]:bounds[i + 1]] for i in range(self.num_layers)]
        return [np.flatnonzero((self.first <= i) & (self.last >= i)) for i in range(self.num_layers)]

    def matrix(self) -> dict[str, np.ndarray]:
        """The whole constraint matrix in CSC form: cover rows (= 1) first, then :meth:`side_rows`.

        Returns ``start``, ``index``, ``value`` (column-wise), ``row_lower``,
        ``row_upper`` and ``num_rows``.
        """
        L, n = self.num_layers, self.n
        G, lo, hi, _ = self.side_rows()
        m = G.shape[0]
        span = self.span
        nz_side = G != 0
        counts = span + nz_side.sum(axis=0)
        start = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=start[1:])
        index = np.empty(start[-1], dtype=np.int64)
        value = np.empty(start[-1], dtype=float)
        if self.single_layer:
            index[start[:-1]] = self.first
            value[start[:-1]] = 1.0
        else:
            for j in range(n):
                s = start[j]
                index[s:s + span[j]] = np.arange(self.first[j], self.last[j] + 1)
                value[s:s + span[j]] = 1.0
        if m:
            pos = start[:-1] + span
            for r in range(m):
                cols = np.flatnonzero(nz_side[r])
                index[pos[cols]] = L + r
                value[pos[cols]] = G[r, cols]
                pos[cols] += 1
        return {
            "start": start, "index": index, "value": value, "num_rows": L + m,
            "row_lower": np.concatenate([np.ones(L), lo]), "row_upper": np.concatenate([np.ones(L), hi]),
        }

    # ---- derived problems ----------------------------------------------------------------
    def with_budgets(self, budgets: Mapping[str, Any]) -> Problem:
        """The same problem with some budgets replaced (names must be cost names)."""
        from .constraints import parse_bound

        lo, hi = self.lower.copy(), self.upper.copy()
        for name, b in budgets.items():
            if name not in self.cost_names:
                from ..errors import did_you_mean

                raise ConfigError(f"budget {name!r} is not a cost of this problem; {did_you_mean(name, self.cost_names)}")
            i = self.cost_names.index(name)
            lo[i], hi[i] = parse_bound(b, name)
        return replace(self, lower=lo, upper=hi)

    def with_cut(self, chosen: Sequence[int], min_diff: int) -> Problem:
        """Add the diversity cut: differ from ``chosen`` in at least ``min_diff`` layers."""
        chosen = np.asarray(chosen, dtype=np.int64)
        cut = Cut(chosen, self.span[chosen].astype(float), float(self.num_layers - min_diff),
                  name=f"diversity{len(self.cuts) + 1}")
        return replace(self, cuts=(*self.cuts, cut))

    def subset(self, keep: np.ndarray, *, why: str = "") -> Problem:
        """The problem restricted to candidates ``keep`` (bool mask); cuts are re-indexed."""
        keep = np.asarray(keep, dtype=bool)
        idx = np.flatnonzero(keep)
        remap = np.full(self.n, -1, dtype=np.int64)
        remap[idx] = np.arange(idx.size)
        cuts = []
        for cut in self.cuts:
            m = remap[cut.index] >= 0
            cuts.append(Cut(remap[cut.index[m]], cut.coef[m], cut.rhs, cut.name))
        try:
            return replace(self, first=self.first[idx], last=self.last[idx], objective=self.objective[idx],
                           costs=self.costs[idx], labels=tuple(self.labels[i] for i in idx),
                           origin=self.origin[idx], cuts=tuple(cuts))
        except ConfigError as e:
            raise ConfigError(f"{e}" + (f" (after {why})" if why else "")) from None

    # ---- evaluation and verification --------------------------------------------------------
    def evaluate(self, chosen: Sequence[int]) -> tuple[float, np.ndarray]:
        """Objective (user's sense) and cost totals (constants included) of ``chosen``."""
        chosen = np.asarray(chosen, dtype=np.int64)
        return float(self.objective[chosen].sum()), self.constants + self.costs[chosen].sum(axis=0)

    def violations(self, chosen: Sequence[int], tol: float = FEAS_TOL) -> list[str]:
        """What ``chosen`` violates, in words (empty when it is feasible)."""
        chosen = np.asarray(chosen, dtype=np.int64)
        out: list[str] = []
        if chosen.size and (chosen.min() < 0 or chosen.max() >= self.n):
            return [f"candidate index outside 0..{self.n - 1}"]
        cover = np.zeros(self.num_layers + 1, dtype=np.int64)
        np.add.at(cover, self.first[chosen], 1)
        np.add.at(cover, self.last[chosen] + 1, -1)
        cover = np.cumsum(cover)[: self.num_layers]
        bad = np.flatnonzero(cover != 1)
        if bad.size:
            out.append(f"layer {int(bad[0])} is covered {int(cover[bad[0]])} times (must be exactly once)")
        _, totals = self.evaluate(chosen)
        for i in self.budget_rows:
            mag = max(1.0, abs(self.upper[i]) if math.isfinite(self.upper[i]) else 0.0,
                      abs(self.lower[i]) if math.isfinite(self.lower[i]) else 0.0,
                      float(np.abs(self.costs[chosen, i]).sum()) + abs(self.constants[i]))
            t = tol * mag
            if totals[i] > self.upper[i] + t:
                out.append(f"{self.cost_names[i]} = {totals[i]:.10g} exceeds its budget {self.upper[i]:.10g}")
            if totals[i] < self.lower[i] - t:
                out.append(f"{self.cost_names[i]} = {totals[i]:.10g} is below its lower bound {self.lower[i]:.10g}")
        pos = {int(j): None for j in chosen}
        for cut in self.cuts:
            act = float(sum(c for i, c in zip(cut.index.tolist(), cut.coef.tolist()) if i in pos))
            if act > cut.rhs + tol * max(1.0, abs(cut.rhs)):
                out.append(f"{cut.name}: {act:g} > {cut.rhs:g}")
        return out

    def make_solution(
        self,
        chosen: Sequence[int] | None,
        status: Status,
        *,
        solver: str,
        seconds: float,
        bound: float | None = None,
        message: str = "",
        info: Mapping[str, Any] | None = None,
    ) -> Solution:
        """A verified :class:`Solution` from chosen candidate indices (of this problem).

        ``bound`` is in minimisation form (as solvers report it).  A solution
        that fails the float check raises :class:`~puzzlekit.errors.SolverError`.
        """
        if chosen is None or not status.has_solution:
            if status.has_solution:
                raise SolverError(f"{solver}: reported {status.value} without a solution")
            return Solution(status, solver=solver, solve_seconds=seconds, objective_name=self.objective_name,
                            maximize=self.maximize, message=message, info=dict(info or {}))
        chosen = np.asarray(sorted(set(int(j) for j in chosen), key=lambda j: (self.first[j], j)), dtype=np.int64)
        bad = self.violations(chosen)
        if bad:
            raise SolverError(f"{solver} returned a solution that fails the float check: {'; '.join(bad)}")
        obj, totals = self.evaluate(chosen)
        cmin = -obj if self.maximize else obj
        gap = None
        if bound is not None and math.isfinite(bound):
            bound = min(bound, cmin)
            gap = abs(cmin - bound) / max(abs(cmin), 1e-10)
            if status is Status.OPTIMAL and gap < 1e-9:
                gap = 0.0
        elif status is Status.OPTIMAL:
            gap, bound = 0.0, cmin
        user_bound = None if bound is None else (-bound if self.maximize else bound)
        choices = [Choice(int(self.first[j]), int(self.last[j]), int(self.origin[j]), self.labels[j]) for j in chosen]
        return Solution(status, obj, {n: float(v) for n, v in zip(self.cost_names, totals)}, choices, solver,
                        float(seconds), gap, user_bound, self.objective_name, self.maximize, message,
                        dict(info or {}),
                        {n: float(v) for n, v in zip(self.cost_names, self.constants.tolist()) if v != 0.0})

    def origin_to_local(self, origin_indices: Sequence[int]) -> np.ndarray | None:
        """Map candidate indices of the source (library) to this problem's; None if one is absent."""
        pos = {int(o): i for i, o in enumerate(self.origin.tolist())}
        try:
            return np.array([pos[int(o)] for o in origin_indices], dtype=np.int64)
        except KeyError:
            return None

    def __repr__(self) -> str:
        b = ", ".join(f"{self.cost_names[i]} in [{self.lower[i]:g}, {self.upper[i]:g}]" for i in self.budget_rows)
        return (f"Problem({self.num_layers} layers, {self.n} candidates, {self.sense} {self.objective_name}"
                + (f", {b}" if b else "") + (f", {len(self.cuts)} cuts" if self.cuts else "") + ")")
