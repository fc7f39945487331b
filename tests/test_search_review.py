"""Defects found in review of the search (issue 17): each test failed before its fix."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import puzzlekit as pk
from puzzlekit.search import Problem, Status, pareto_front, search


def tiny_library(layers: int = 4) -> pk.BlockLibrary:
    """A small library: per layer the parent block, a half FFN and a no-op attention, with costs."""
    spec = pk.ParentSpec.from_hf_config({"model_type": "llama", "hidden_size": 64, "intermediate_size": 256,
                                         "num_attention_heads": 4, "num_key_value_heads": 2,
                                         "num_hidden_layers": layers, "vocab_size": 128})
    lib = pk.BlockLibrary(layers, spec)
    sc = pk.Scenario("h100-sxm", "fp8", 8, 128, 32)
    lib.add_scenario(sc)
    blocks = [(pk.BlockConfig(pk.AttentionConfig.gqa(2), pk.FFNConfig.swiglu(256)), 4.0, 0.0),
              (pk.BlockConfig(pk.AttentionConfig.gqa(2), pk.FFNConfig.swiglu(128)), 3.0, 0.1),
              (pk.BlockConfig(pk.AttentionConfig.make_no_op(), pk.FFNConfig.swiglu(256)), 2.0, 0.3)]
    for i in range(layers):
        for b, _, kl in blocks:
            lib.add(i, b, {"kl_div": kl * (1 + 0.1 * i)})
    for b, mem, _ in blocks:
        lib.set_costs(sc, b, {"memory_mib": mem, "runtime_ms": mem / 2})
    return lib


# ---- 1. HiGHS at a budget's feasibility tolerance ---------------------------------------------------
def test_highs_answer_at_the_budget_tolerance_is_verified_not_an_error(nvlabs_library):
    b = {"memory_mib": 79994.6014, "runtime_ms": 51200}
    ref = search(nvlabs_library, "kl_div", b, solver="puzzlekit-exact")
    assert abs(ref.objective - 6.86247) < 1e-5
    h = search(nvlabs_library, "kl_div", b, solver="highs")  # raised SolverError (the float re-check) before
    assert h.status is Status.OPTIMAL and abs(h.objective - ref.objective) < 1e-9
    assert h.costs["memory_mib"] <= b["memory_mib"] * (1 + 1e-9)
    # HiGHS' own default tolerance again: the answer it returns is repaired, never raised
    loose = search(nvlabs_library, "kl_div", b, solver="highs", solver_options={"mip_feasibility_tolerance": 1e-6})
    assert loose.status.has_solution and loose.costs["memory_mib"] <= b["memory_mib"] * (1 + 1e-9)
    assert loose.objective >= ref.objective - 1e-9 and loose.objective - ref.objective <= (loose.gap or 0) * 10 + 1e-9
    # the Pareto front through HiGHS goes through the same point
    front = pareto_front(nvlabs_library, "kl_div", "memory_mib", {"runtime_ms": 51200}, low=79980,
                         high=79994.6014, solver="highs")
    assert front and abs(front[0].objective - ref.objective) < 1e-9


# ---- 6. ortools-scip beside python-mip ----------------------------------------------------------------
def test_ortools_scip_runs_with_python_mip_loaded_in_the_process():
    pytest.importorskip("mip")
    pytest.importorskip("ortools")
    code = """
import mip
mip.Model(solver_name=mip.CBC)  # loads python-mip's CBC libraries (libOsiClp): ortools' pywraplp no longer imports
import numpy as np
from puzzlekit.search import Problem, search
p = Problem(3, [0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2], [0, 1, 0, 2, 0, 4.0], [[4], [1], [4], [2], [4], [1]], upper=[9])
s = search(p, solver="ortools-scip")
print(s.objective, s.solver, s.info.get("isolated"))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    obj, solver, isolated = out.stdout.split()
    assert float(obj) == 1.0 and solver == "ortools-scip" and isolated == "True"


# ---- 7. CLI input that cannot be meant ---------------------------------------------------------------
@pytest.fixture
def lib_json(tmp_path):
    path = tmp_path / "lib.json"
    tiny_library().save(path)
    return str(path)


def _cli(capsys, *argv):
    from puzzlekit.cli import main

    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_refuses_counts_that_cannot_be_meant(lib_json, capsys):
    base = ["search", lib_json, "--objective", "kl_div", "--budget", "memory_mib<=12"]
    for bad, what in ((["--num-solutions", "-3"], "--num-solutions -3: must be at least 1"),
                      (["--num-solutions", "0"], "--num-solutions 0"),
                      (["--num-solutions", "100000"], "at most 1000"),
                      (["--min-diversity", "1000"], "between 1 and the library's 4 layers"),
                      (["--num-solutions", "3", "--min-diversity", "5"], "between 1 and the library's 4 layers"),
                      (["--min-diversity", "0"], "--min-diversity 0")):
        rc, out, err = _cli(capsys, *base, *bad)
        assert rc == 2 and what in err, (bad, err)
    rc, out, err = _cli(capsys, "sweep", lib_json, "--objective", "kl_div", "--vary", "memory_mib=8:16:1000000")
    assert rc == 2 and "at most 10000" in err
    rc, out, err = _cli(capsys, "fuse", "super-49b", "--plan-only", "--tp", "3")
    assert rc == 2 and "--tp 3: must divide the model's 64 attention heads" in err
    assert _cli(capsys, "fuse", "super-49b", "--plan-only", "--tp", "0")[0] == 2


def test_cli_long_runs_show_progress(lib_json, capsys):
    rc, out, err = _cli(capsys, "search", lib_json, "--objective", "kl_div", "--budget", "memory_mib<=14",
                        "--num-solutions", "4", "--min-diversity", "1", "--json")
    assert rc == 0 and len(json.loads(out)["solutions"]) == 4
    assert "solution 1/4" in err and "solution 4/4" in err
    rc, out, err = _cli(capsys, "sweep", lib_json, "--objective", "kl_div", "--vary", "memory_mib=8:16:40", "--json")
    assert rc == 0 and len(json.loads(out)["points"]) == 40 and "point 40/40" in err


# ---- the default never loses much: quick proofs ----------------------------------------------------------
def test_infeasible_multi_budget_is_proved_quickly():
    # each budget reachable alone, not together: the LP relaxation proves it (the programme alone searched
    # millions of states on such problems)
    from puzzlekit.search.families import family_problem
    from puzzlekit.search.presolve import least_values

    p = family_problem("noisy", 3, L=40, k=60, m=4)
    least = least_values(p)
    q = p.with_budgets({n: least[n][0] + 0.002 * (least[n][1] - least[n][0]) for n in p.cost_names})
    from puzzlekit.errors import InfeasibleError

    with pytest.raises(InfeasibleError):
        search(q, solver="highs")
    from puzzlekit.search import solve_problem

    s = solve_problem(q)
    assert s.status is Status.INFEASIBLE and s.solve_seconds < 5.0
    s = solve_problem(q, presolve_=False)  # the backend's own proof
    assert s.status is Status.INFEASIBLE and s.info.get("exact_reason") == "the LP relaxation is infeasible"


def test_default_hands_over_when_the_programme_would_blow_up():
    # a tiny state cap: the programme's linear projection gives up early and HiGHS answers (raced or after)
    from puzzlekit.search.families import family_problem

    p = family_problem("independent", 1, L=20, k=16, m=3)
    ref = search(p, solver="highs")
    s = search(p, solver_options={"max_states": 20, "race_delay": 10.0})
    assert s.solver == "highs" and abs(s.objective - ref.objective) < 1e-9
    assert "gave up" in s.info["fallback"] and s.info["race"] == "HiGHS after the programme gave up"
    # racing from the start: whoever proves first, the same optimum
    r = search(p, solver_options={"race_delay": 0.0})
    assert r.status is Status.OPTIMAL and abs(r.objective - ref.objective) < 1e-9 and "race" in r.info


def test_race_stops_the_loser_cleanly():
    import threading
    import time

    from puzzlekit.search.families import family_problem

    def races():
        return [t for t in threading.enumerate() if t.name == "puzzlekit-highs-race"]

    def settle():  # a cancelled HiGHS returns at its next interrupt poll (a few times a second)
        deadline = time.time() + 5.0
        while races() and time.time() < deadline:
            time.sleep(0.05)

    settle()  # (earlier tests' races)
    before = threading.active_count()
    p = family_problem("noisy", 2, L=24, k=20, m=3)
    for delay in (0.0, 0.01):
        s = search(p, solver_options={"race_delay": delay})
        assert s.status is Status.OPTIMAL
    settle()
    assert not races() and threading.active_count() == before  # no HiGHS thread left running


def test_problem_arrays_are_unchanged_by_a_race():
    p = Problem(3, [0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2], [0, 1, 0, 2, 0, 4.0],
                np.array([[4, 1], [1, 1], [4, 1], [2, 1], [4, 1], [1, 1.0]]), upper=[9, 3])
    s = search(p, solver_options={"race_delay": 0.0})
    assert s.objective == 1.0 and s.costs == {"cost0": 9.0, "cost1": 3.0}


# ---- 2. the multi-budget Pareto path ---------------------------------------------------------------
def _brute_front(p: Problem, cost: str) -> list[tuple[float, float]]:
    """(cost, objective) of the exact front by enumerating every cover (small problems)."""
    import itertools

    i = p.cost_names.index(cost)
    pts = []
    groups = [np.flatnonzero(p.first == layer) for layer in range(p.num_layers)]
    for ch in itertools.product(*groups):
        ch = list(ch)
        if not p.violations(ch):
            obj, tot = p.evaluate(ch)
            pts.append((float(tot[i]), obj))
    pts.sort(key=lambda t: (-t[0], t[1]))
    front, best = [], None
    for c, o in sorted(pts, key=lambda t: (t[0], t[1])):  # increasing cost: keep strict objective improvements
        if best is None or o < best - 1e-12:
            front.append((c, o))
            best = o
    return front[::-1]


@pytest.mark.parametrize("seed", range(6))
def test_multi_budget_pareto_front_is_exact(seed):
    r = np.random.default_rng(seed)
    L, k = 4, 3
    first = np.repeat(np.arange(L), k)
    costs = r.uniform(1, 10, (L * k, 2))
    p = Problem(L, first, first, r.normal(size=L * k), costs, upper=[1e9, costs[:, 1].mean() * L])
    got = [(s.costs["cost0"], s.objective) for s in pareto_front(p, cost="cost0")]
    ref = _brute_front(p, "cost0")
    assert len(got) == len(ref) and np.allclose(got, ref, atol=1e-9), (got, ref)


def test_multi_budget_pareto_front_on_nvidia_matches_single_solves(nvlabs_library):
    # (its speed against the loop of single solves is measured in benchmarks/solvers.py --pareto)
    b = {"runtime_ms": 51200}
    front = pareto_front(nvlabs_library, "kl_div", "memory_mib", b, low=79900, high=80000)
    assert len(front) >= 5 and all(s.status is Status.OPTIMAL for s in front)
    costs = [s.costs["memory_mib"] for s in front]
    assert costs == sorted(costs, reverse=True) and costs[0] <= 80000
    objs = [s.objective for s in front]
    assert all(a < b for a, b in zip(objs, objs[1:]))  # less memory, strictly worse
    for s in front:  # each point is the optimum at its own cost (a loop of single solves)
        one = search(nvlabs_library, "kl_div", {**b, "memory_mib": s.costs["memory_mib"]})
        assert abs(one.objective - s.objective) < 1e-9
