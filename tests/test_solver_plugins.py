"""The solver plug-in registry: a real third-party package (built and pip-installed here) registers a
backend through the ``puzzlekit.solvers`` entry-point group; ``puzzlekit solvers`` lists it and
``puzzlekit search --solver NAME`` uses it.  Also :func:`puzzlekit.solvers.register` in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from test_search_review import tiny_library

from puzzlekit.search import Problem, search

# A tiny exact backend: enumerate every exact cover (fine for a handful of layers).
BACKEND = '''
"""A third-party puzzlekit backend: brute force over exact covers."""
import math
import time

import numpy as np
from puzzlekit.solvers import Backend


class BruteBackend(Backend):
    name = "tiny-brute"
    capabilities = frozenset({"float_exact"})
    description = "brute force over every exact cover (a test plug-in)"

    def solve(self, problem, options):
        from puzzlekit.search import Status

        t0 = time.perf_counter()
        by_first = [np.flatnonzero(problem.first == i) for i in range(problem.num_layers)]
        best, arg = math.inf, None

        def rec(pos, chosen):
            nonlocal best, arg
            if pos == problem.num_layers:
                if not problem.violations(chosen):
                    v = float(problem.c[chosen].sum())
                    if v < best:
                        best, arg = v, list(chosen)
                return
            for j in by_first[pos]:
                rec(int(problem.last[j]) + 1, [*chosen, int(j)])

        rec(0, [])
        status = Status.OPTIMAL if arg is not None else Status.INFEASIBLE
        return problem.make_solution(arg, status, solver=self.name, seconds=time.perf_counter() - t0,
                                     info={"plugin": "pk_tiny_backend"})
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "pk-tiny-backend"
version = "0.1.0"

[project.entry-points."puzzlekit.solvers"]
tiny-brute = "pk_tiny_backend:BruteBackend"

[tool.setuptools]
packages = ["pk_tiny_backend"]
'''


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package built and pip-installed (no network: --no-index, the installed setuptools) into a target."""
    src = tmp_path_factory.mktemp("pkg")
    (src / "pk_tiny_backend").mkdir()
    (src / "pk_tiny_backend" / "__init__.py").write_text(textwrap.dedent(BACKEND))
    (src / "pyproject.toml").write_text(PYPROJECT)
    target = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                        "--no-build-isolation", "--target", str(target), str(src)],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        pytest.fail(f"pip could not install the test plug-in: {r.stderr[-1500:]}")
    assert any(p.name.startswith("pk_tiny_backend-0.1.0") and p.suffix == ".dist-info" for p in target.iterdir())
    return target


def _cli(target, *argv):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "puzzlekit", *argv], capture_output=True, text=True, env=env,
                          timeout=300)


def test_installed_plugin_is_listed_and_used_by_the_cli(installed, tmp_path):
    r = _cli(installed, "solvers", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)["solvers"]}
    assert rows["tiny-brute"]["installed"] and "brute force" in rows["tiny-brute"]["description"]
    assert list(rows)[:5] == ["puzzlekit-exact", "highs", "pyomo-highs", "ortools-cpsat", "ortools-scip"]
    r = _cli(installed, "solvers")
    assert "tiny-brute" in r.stdout and "installed" in r.stdout
    lib = tmp_path / "lib.json"
    tiny_library().save(lib)
    base = ["search", str(lib), "--objective", "kl_div", "--budget", "memory_mib<=12", "--budget", "runtime_ms<=6",
            "--json"]
    r = _cli(installed, *base, "--solver", "tiny-brute")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["solver"] == "tiny-brute" and got["status"] == "optimal"
    ref = json.loads(_cli(installed, *base).stdout)
    assert abs(got["objective"] - ref["objective"]) < 1e-12 and got["costs"]["memory_mib"] <= 12
    # without the package on the path the name is unknown: a clear error, exit 2
    r = subprocess.run([sys.executable, "-m", "puzzlekit", *base, "--solver", "tiny-brute"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "unknown solver 'tiny-brute'" in r.stderr


def test_register_in_process():
    from puzzlekit import solvers as reg

    class Greedy(reg.Backend):
        name = "test-register-greedy"
        description = "test"

        def solve(self, problem, options):
            from puzzlekit.search import Status

            chosen = [int(g[problem.c[g].argmin()]) for g in problem.layer_groups]
            return problem.make_solution(chosen, Status.FEASIBLE, solver=self.name, seconds=0.0)

    try:
        assert reg.register(Greedy) is Greedy
        assert "test-register-greedy" in reg.solver_names() and "test-register-greedy" in reg.available_solvers()
        p = Problem(2, [0, 0, 1, 1], [0, 0, 1, 1], [1.0, 2.0, 3.0, 0.5], [[1], [1], [1], [1]], upper=[5])
        s = search(p, solver="test-register-greedy")
        assert s.solver == "test-register-greedy" and s.objective == 1.5
        with pytest.raises(TypeError, match="not a puzzlekit.solvers.Backend"):
            reg.register(object)  # type: ignore[arg-type]
    finally:
        reg._REGISTRY.pop("test-register-greedy", None)
    assert "test-register-greedy" not in reg.solver_names()
