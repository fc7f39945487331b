"""The default solver against brute force over the problem families (``puzzlekit.search.families``):
1,000 small instances in the default suite (independent, shared and noisy costs, lower bounds, spans,
near-infeasible and infeasible budgets, maximisation; 1-4 budgets), 0 mismatches; a larger set against
HiGHS is marked slow."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from puzzlekit.errors import InfeasibleError
from puzzlekit.search import Problem, search
from puzzlekit.search.families import FAMILIES, _cover_totals


def brute_best(p: Problem) -> float | None:
    """The best objective (the user's sense) over every exact cover meeting the budgets, None if none does."""
    q = replace(p, costs=np.column_stack([p.costs, p.objective]), cost_names=(*p.cost_names, "__objective"),
                lower=np.r_[p.lower, -np.inf], upper=np.r_[p.upper, np.inf], constants=np.r_[p.constants, 0.0])
    tot = _cover_totals(q, limit=200_000)
    assert tot is not None, "instance too large for brute force"
    cost, obj = tot[:, :-1], tot[:, -1]
    bounds = np.maximum(np.where(np.isfinite(p.upper), np.abs(p.upper), 0.0),
                        np.where(np.isfinite(p.lower), np.abs(p.lower), 0.0))
    mag = np.maximum(np.maximum(1.0, np.abs(cost)), bounds)  # Problem.violations' scale
    ok = np.all((cost <= p.upper + 1e-9 * mag) & (cost >= p.lower - 1e-9 * mag), axis=1)
    if not ok.any():
        return None
    return float(obj[ok].max() if p.maximize else obj[ok].min())


def _check(p: Problem, ref: float | None) -> str | None:
    """'' when the default agrees with ``ref``, else what differs."""
    try:
        got = search(p)
    except InfeasibleError:
        return None if ref is None else f"default says infeasible, reference {ref}"
    if ref is None:
        return f"default {got.objective}, reference infeasible"
    if p.violations(p.origin_to_local(got.candidates)):
        return "default answer violates a budget"
    if abs(got.objective - ref) > 1e-7 * max(1.0, abs(ref)):
        return f"default {got.objective} != reference {ref}"
    return None


def _instances(count: int, seed: int):
    r = np.random.default_rng(seed)
    names = list(FAMILIES)
    for i in range(count):
        name = names[i % len(names)]
        L, k = int(r.integers(2, 7)), int(r.integers(2, 5))
        yield name, FAMILIES[name](seed + i, L, k)


def test_default_matches_brute_force_on_1000_family_instances():
    mismatches, infeasible, per_family = [], 0, {}
    for n, (name, p) in enumerate(_instances(1000, 0)):
        ref = brute_best(p)
        infeasible += ref is None
        per_family[name] = per_family.get(name, 0) + 1
        bad = _check(p, ref)
        if bad:
            mismatches.append((n, name, bad))
    assert not mismatches, mismatches[:5]
    assert sum(per_family.values()) == 1000 and set(per_family) == set(FAMILIES)
    assert 50 <= infeasible <= 600  # the infeasible family (and some tight draws) really are infeasible


@pytest.mark.slow
def test_default_matches_highs_on_larger_family_instances():
    mismatches = []
    for name, make in FAMILIES.items():
        for seed in range(12):
            p = make(seed, 20, 12)
            try:
                ref = search(p, solver="highs").objective
            except InfeasibleError:
                ref = None
            bad = _check(p, ref)
            if bad:
                mismatches.append((name, seed, bad))
    assert not mismatches, mismatches[:5]


def test_brute_force_reference_is_itself_right():
    # a hand-made instance: 2 layers x 2 candidates, one budget; the reference finds the known optimum
    p = Problem(2, [0, 0, 1, 1], [0, 0, 1, 1], [1.0, 2.0, 3.0, 0.5], [[5], [1], [1], [5]], upper=[6])
    assert brute_best(p) == 2.5  # covers: (0, 2) 4.0, (1, 2) 5.0, (1, 3) 2.5 within 6; (0, 3) costs 10
    assert brute_best(p.with_budgets({"cost0": 1.5})) is None
    assert math.isclose(brute_best(replace(p, maximize=True)), 5.0)
