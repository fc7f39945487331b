"""Solver edge cases not covered in test_search.py: ties, forced choices, extreme objective
coefficients, NaN scores in a library, infeasibility on every backend, time limits with the gap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from puzzlekit.solvers import available_solvers

import puzzlekit as pk
from puzzlekit.errors import InfeasibleError, PuzzlekitError
from puzzlekit.search import Problem, Status, search

SOLVERS = available_solvers()


def test_ties_give_an_optimal_feasible_answer_on_every_backend(reliability):
    # every candidate has the same score: any feasible cover is optimal; the answer must be feasible and stable
    L, k = 5, 4
    first = np.repeat(np.arange(L), k)
    costs = np.tile(np.arange(1, k + 1, dtype=float), L)[:, None]
    p = Problem(L, first, first, np.ones(L * k), costs, upper=[2.0 * L])
    for s in SOLVERS:
        a, b = search(p, solver=s), search(p, solver=s)
        assert a.objective == pytest.approx(L) and not p.violations(p.origin_to_local(a.candidates))
        assert a.candidates == b.candidates, s  # deterministic under ties
    reliability("solver edge cases", "all-equal scores (ties): optimal, feasible and repeatable on every backend",
                len(SOLVERS))


def test_one_candidate_per_layer_is_forced(reliability):
    p = Problem(3, [0, 1, 2], [0, 1, 2], [0.5, 0.25, 0.125], [[1.0], [2.0], [3.0]], upper=[6.0])
    for s in SOLVERS:
        sol = search(p, solver=s)
        assert sol.objective == pytest.approx(0.875) and sol.costs["cost0"] == pytest.approx(6.0)
    with pytest.raises(InfeasibleError) as e:
        search(Problem(3, [0, 1, 2], [0, 1, 2], [0.5, 0.25, 0.125], [[1.0], [2.0], [3.0]], upper=[5.9]))
    assert e.value.least == {"cost0": 6.0}
    reliability("solver edge cases", "one candidate per layer (forced): exact on every backend, infeasible budget "
                                     "names the least reachable value", len(SOLVERS) + 1)


def test_extreme_objective_coefficients(reliability):
    # scores of 1e12 and 1e-12 side by side: the tiny differences must still decide the choice
    obj = [1e12, 1e-12, 2e-12, 1e12 + 1e6, 3e-12, 1e-12]
    p = Problem(2, [0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1], obj, [[1], [2], [1], [1], [1], [2]], upper=[3])
    for s in SOLVERS:
        sol = search(p, solver=s)
        assert not p.violations(p.origin_to_local(sol.candidates))
        assert sol.objective < 1.0, (s, sol.objective)  # never a 1e12 block when a tiny one fits
    reliability("solver edge cases", "objective coefficients 1e12 next to 1e-12: feasible, never the huge score",
                len(SOLVERS))


def _lib_with_score(value: float) -> pk.BlockLibrary:
    spec = pk.ParentSpec.from_hf_config({"model_type": "llama", "hidden_size": 64, "intermediate_size": 256,
                                         "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
                                         "vocab_size": 128})
    lib = pk.BlockLibrary(2, spec)
    sc = pk.Scenario("h100-sxm", "fp8", 8, 128, 32)
    lib.add_scenario(sc)
    a = pk.BlockConfig(pk.AttentionConfig.gqa(2), pk.FFNConfig.swiglu(256))
    n = pk.BlockConfig(pk.AttentionConfig.make_no_op(), pk.FFNConfig.make_no_op())
    for i in range(2):
        lib.add(i, a, {"kl_div": 0.0})
        lib.add(i, n, {"kl_div": value if i == 1 else 1.0})
    lib.set_costs(sc, a, {"memory_mib": 1.0})
    lib.set_costs(sc, n, {"memory_mib": 0.0})
    return lib


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_scores_are_named_not_optimised(bad, reliability):
    lib = _lib_with_score(bad)
    with pytest.raises(PuzzlekitError) as e:
        search(lib, "kl_div", {"memory_mib": 1.0})
    msg = str(e.value).lower()
    assert "kl_div" in msg and ("nan" in msg or "inf" in msg or "finite" in msg), msg
    reliability("solver edge cases", "NaN / +inf / -inf score in a library: search refuses, naming the metric", 1)


def test_infeasible_on_every_backend_names_each_budget(reliability):
    p = Problem(2, [0, 0, 1, 1], [0, 0, 1, 1], [1.0, 2.0, 1.0, 2.0], [[5, 1], [3, 9], [4, 1], [2, 9]],
                upper=[4, 10])
    for s in SOLVERS:
        with pytest.raises(InfeasibleError) as e:
            search(p, solver=s)
        assert set(e.value.least) == {"cost0", "cost1"}, s
        assert e.value.least["cost0"] == pytest.approx(5.0) and e.value.least["cost1"] == pytest.approx(2.0)
        assert "cost0" in str(e.value)
    reliability("solver edge cases", "infeasible pair of budgets: every backend raises InfeasibleError with the least "
                                     "reachable value of each budget", len(SOLVERS))


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["highs"])
def test_time_limit_incumbent_is_within_its_gap_of_the_optimum(solver, reliability):
    r = np.random.default_rng(3)
    L, k = 40, 30
    first = np.repeat(np.arange(L), k)
    costs = r.uniform(1, 100, (L * k, 3))
    obj = -(costs.sum(1) + r.normal(0, 20, L * k))
    p = Problem(L, first, first, obj, costs, upper=costs.mean(0) * L * 0.8)
    quick = search(p, solver=solver, time_limit=0.2)
    best = search(p, solver=solver, time_limit=60)
    assert quick.status in (Status.OPTIMAL, Status.FEASIBLE)
    assert not p.violations(p.origin_to_local(quick.candidates))
    assert quick.objective >= best.objective - 1e-6 * abs(best.objective)
    if quick.status is Status.FEASIBLE and quick.gap is not None and best.status is Status.OPTIMAL:
        # the reported relative gap bounds the true distance to the optimum
        assert quick.objective - best.objective <= quick.gap * max(1.0, abs(quick.objective)) + 1e-6
    reliability("solver edge cases", "time limit: incumbent feasible, never better than the optimum, within its "
                                     "reported gap", 1)
