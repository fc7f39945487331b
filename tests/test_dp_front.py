"""The one-pass Pareto programme (``dp_front``) against the point-by-point walk it replaces."""

import pytest

from puzzlekit.search.families import family_problem
from puzzlekit.search.presolve import Paths, dp_front, dp_one_budget


def _walk(p):
    paths, out, prev = Paths(p), [], None
    while True:
        x, v = dp_one_budget(p, paths=paths, strict_below=prev)
        if x is None:
            return out
        c = float(p.costs[x, 0].sum())
        out.append((v, c))
        prev = c


@pytest.mark.parametrize("family,seed", [("independent", 0), ("shared", 1), ("noisy", 2), ("spans", 3), ("spans", 4)])
def test_front_in_one_pass_equals_the_walk(family, seed):
    p = family_problem(family, seed, L=8, k=6, m=1)
    p = p.with_budgets({p.cost_names[0]: float(p.costs[:, 0].max()) * p.num_layers})  # loose: the whole front
    walk = _walk(p)
    front = list(dp_front(p))
    assert len(front) == len(walk) > 3
    for (x, v, c), (wv, wc) in zip(front, walk):
        assert v == pytest.approx(wv, abs=1e-9) and c == pytest.approx(wc, abs=1e-9)
        assert float(p.c[x].sum()) == pytest.approx(v, abs=1e-12) and not p.violations(x)
    costs = [c for _, _, c in front]
    values = [v for _, v, _ in front]
    assert costs == sorted(costs, reverse=True) and values == sorted(values)  # cheaper is never better


def test_front_of_an_infeasible_problem_is_empty():
    p = family_problem("independent", 5, L=6, k=4, m=1)
    p = p.with_budgets({p.cost_names[0]: -1.0})
    assert list(dp_front(p)) == [] and dp_one_budget(p)[0] is None
