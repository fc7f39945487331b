"""Search: reference answers, brute force, edge cases, CLI."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from puzzlekit.solvers import available_solvers, get_solver

from puzzlekit.errors import ConfigError, InfeasibleError
from puzzlekit.search import Problem, Status, pareto_front, search, search_diverse, sweep

SOLVERS = available_solvers()
B3 = {"memory_mib": 0.85 * 80 * 1437.109375, "runtime_ms": 0.85 * 80 * 816.9723410644532}


def brute(p: Problem):
    """Best objective over every exact cover (small problems)."""
    best = math.inf
    groups = [np.flatnonzero(p.first == i) for i in range(p.num_layers)]

    def rec(pos, chosen):
        nonlocal best
        if pos == p.num_layers:
            if not p.violations(chosen):
                best = min(best, float(p.c[chosen].sum()))
            return
        for j in groups[pos]:
            rec(int(p.last[j]) + 1, [*chosen, int(j)])

    rec(0, [])
    return best


def rand_problem(seed, L=4, k=3, m=2, spans=False):
    r = np.random.default_rng(seed)
    first, last = [], []
    for i in range(L):
        for _ in range(k):
            first.append(i)
            last.append(i)
        if spans and i + 1 < L:
            first.append(i)
            last.append(i + 1)
    n = len(first)
    costs = r.uniform(0, 10, (n, m))
    ub = costs.mean(0) * L * r.uniform(0.6, 1.2, m)
    return Problem(L, first, last, r.normal(size=n), costs, upper=ub)


@pytest.mark.parametrize("solver", [s if s == "highs" else pytest.param(s, marks=pytest.mark.slow) for s in SOLVERS])
def test_reference_answers(nvlabs_library, solver):
    a = search(nvlabs_library, "kl_div", {"memory_mib": 80000, "runtime_ms": 51200}, solver=solver)
    assert a.status is Status.OPTIMAL and abs(a.objective - 6.861455) < 1e-6
    assert abs(a.costs["memory_mib"] - 79994.6) < 0.1 and abs(a.costs["runtime_ms"] - 46980.2) < 0.1
    b = search(nvlabs_library, "kl_div", {"memory_mib": 40000}, solver=solver)
    assert abs(b.objective - 18.935023) < 1e-6
    c = search_diverse(nvlabs_library, "kl_div", B3, num_solutions=3, min_diversity=20, solver=solver)
    assert [round(s.objective, 4) for s in c] == [3.2821, 3.3417, 3.3822]
    for s, t in itertools.combinations(c, 2):
        assert sum(x != y for x, y in zip(s.layer_candidates(), t.layer_candidates())) >= 20


def test_default_one_budget_dp_matches_highs(nvlabs_library):
    for m in (30000, 55555, 90000):
        a = search(nvlabs_library, "kl_div", {"memory_mib": m})
        b = search(nvlabs_library, "kl_div", {"memory_mib": m}, solver="highs")
        assert a.solver == "puzzlekit-dp" and abs(a.objective - b.objective) < 1e-6


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("seed", range(6))
def test_random_vs_brute_force(solver, seed):
    p = rand_problem(seed, spans=seed % 2 == 1)
    best = brute(p)
    if not math.isfinite(best):
        with pytest.raises(InfeasibleError):
            search(p, solver=solver)
        return
    for pres in (True, False):
        s = search(p, solver=solver, presolve=pres)
        assert abs(s.objective - best) < 1e-6 * max(1, abs(best))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 5), st.integers(1, 4), st.integers(0, 2), st.booleans())
def test_hypothesis_default_vs_brute(seed, L, k, m, spans):
    p = rand_problem(seed, L, k, m, spans)
    best = brute(p)
    if not math.isfinite(best):
        with pytest.raises(InfeasibleError) as e:
            search(p)
        assert set(e.value.least) == {p.cost_names[i] for i in p.budget_rows}
    else:
        assert abs(search(p).objective - best) < 1e-7 * max(1, abs(best))


def test_infeasible_names_budgets(nvlabs_library):
    with pytest.raises(InfeasibleError) as e:
        search(nvlabs_library, "kl_div", {"memory_mib": (200000, None), "runtime_ms": 51200})
    assert "memory_mib >= 200000" in str(e.value) and "UNREACHABLE" in str(e.value)
    assert "runtime_ms" in e.value.least
    p = Problem(2, [0, 0, 1], [0, 0, 1], [1.0, 2.0, 1.0], [[5], [3], [4]], upper=[6])
    with pytest.raises(InfeasibleError) as e:
        search(p)
    assert e.value.least == {"cost0": 7.0} and "least reachable 7" in str(e.value)


def test_edge_cases():
    p = Problem(1, [0], [0], [2.0], np.zeros((1, 0)))
    assert search(p).objective == 2.0
    p = Problem(1, [0, 0, 0], [0, 0, 0], [1.0, 1.0, 3.0], [[1e12], [1e12], [1e-12]], upper=[1e12])
    for s in SOLVERS:
        assert search(p, solver=s).objective == 1.0
    with pytest.raises(ConfigError, match="nan"):
        Problem(1, [0], [0], [float("nan")], np.zeros((1, 0)))
    with pytest.raises(ConfigError, match="layer 1 has no candidate"):
        Problem(2, [0], [0], [1.0], np.zeros((1, 0)))


def test_maximize_and_lower_bound():
    p = Problem(2, [0, 0, 1, 1], [0, 0, 1, 1], [1.0, 5.0, 2.0, 4.0], [[1], [3], [1], [3]], lower=[4], upper=[5],
                maximize=True)
    s = search(p, solver="highs")
    assert s.objective == 7.0 and s.costs["cost0"] == 4.0


@pytest.mark.parametrize("solver", SOLVERS)
def test_time_limit_returns_incumbent(solver):
    r = np.random.default_rng(0)
    L, k = 60, 40
    n = L * k
    first = np.repeat(np.arange(L), k)
    costs = r.uniform(1, 100, (n, 3))
    obj = -(costs.sum(1) + r.normal(0, 20, n))
    p = Problem(L, first, first, obj, costs, upper=costs.mean(0) * L * 0.8)
    # with presolve the front end holds an incumbent, so a backend stopped before its own first solution
    # (SCIP on a loaded machine) still yields a verified FEASIBLE answer
    s = search(p, solver=solver, time_limit=0.3)
    assert s.status in (Status.OPTIMAL, Status.FEASIBLE) and not p.violations(p.origin_to_local(s.candidates))
    if s.status is Status.FEASIBLE:
        assert s.gap is not None and s.gap >= 0


def test_sweep_and_pareto(nvlabs_library):
    vals = np.linspace(30000, 115000, 7)
    r = sweep(nvlabs_library, "kl_div", "memory_mib", vals)
    objs = [s.objective for _, s in r.points]
    assert all(a >= b - 1e-12 for a, b in zip(objs, objs[1:]))
    ref = search(nvlabs_library, "kl_div", {"memory_mib": vals[3]}, solver="highs")
    assert abs(objs[3] - ref.objective) < 1e-6
    r2 = sweep(nvlabs_library, "kl_div", "memory_mib", vals[:3], {"runtime_ms": 40000})
    assert r2.points[0][1].solver in ("puzzlekit-exact", "highs")  # two budgets: the default backend
    p = Problem(3, [0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2], [0, 1, 0, 2, 0, 4.0], [[4], [1], [4], [2], [4], [1]])
    front = pareto_front(p, cost="cost0", high=12)
    assert [(f.costs["cost0"], f.objective) for f in front] == [(12, 0), (9, 1), (7, 3), (6, 5), (4, 7)]


def test_solvers_registry_no_native_import():
    import subprocess
    import sys

    code = ("import sys, puzzlekit.solvers as s; s.available_solvers(); "
            "print(any(m in sys.modules for m in ('highspy', 'ortools.sat', 'pyomo.environ')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    with pytest.raises(Exception, match="unknown solver"):
        get_solver("gurobi-nope")


def test_cli_json(nvlabs_library, tmp_path, capsys):
    from puzzlekit.cli import main

    lib = tmp_path / "lib.json"
    nvlabs_library.save(lib)
    assert main(["search", str(lib), "--objective", "kl_div", "--budget", "memory_mib<=80000",
                 "--budget", "runtime_ms<=51200", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {"status", "objective", "costs", "choices", "solver", "solve_seconds", "gap"} <= set(d)
    assert abs(d["objective"] - 6.861455) < 1e-6 and len(d["choices"]) == 80
    assert main(["search", str(lib), "--objective", "kl_div", "--budget", f"memory_mib<={B3['memory_mib']}",
                 "--budget", f"runtime_ms<={B3['runtime_ms']}", "--num-solutions", "2", "--min-diversity", "20",
                 "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["solutions"]) == 2
    assert main(["sweep", str(lib), "--objective", "kl_div", "--vary", "memory_mib=30000:115000:4", "--json",
                 "--plot", str(tmp_path / "p.png")]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [p["value"] for p in d["points"]] == list(np.linspace(30000, 115000, 4))
    assert (tmp_path / "p.png").stat().st_size > 0
    assert main(["search", str(lib), "--objective", "kl_div", "--budget", "memory_mib>=200000"]) == 2
    assert main(["solvers"]) == 0
