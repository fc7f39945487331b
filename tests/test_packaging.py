import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_import_puzzlekit_does_not_import_torch():
    code = "import sys, puzzlekit, puzzlekit.solvers, puzzlekit.profilers; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_every_package_folder_is_listed_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = set()
    for init in ROOT.glob("puzzlekit/**/__init__.py"):
        found.add(".".join(init.parent.relative_to(ROOT).parts))
    for data in [*ROOT.glob("puzzlekit/**/*.yaml"), *ROOT.glob("puzzlekit/**/*.json")]:  # data-only folders too
        found.add(".".join(data.parent.relative_to(ROOT).parts))  # (setuptools ignores unlisted ones)
    for top in ("solvers", "profilers"):
        for init in (ROOT / top).glob("**/__init__.py"):
            found.add(".".join(("puzzlekit",) + init.parent.relative_to(ROOT).parts))
    assert found == listed


def test_public_names_have_docstrings():
    import puzzlekit

    missing = [n for n in puzzlekit.__all__ if not (getattr(puzzlekit, n).__doc__ or "").strip()]
    assert not missing, f"public names without a docstring: {missing}"


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    line = next(x for x in ci.splitlines() if x.startswith("TEST_CMD="))
    cmd = line.split("=", 1)[1].strip('"')
    assert cmd in readme


def test_search_function_survives_importing_the_subpackage_first():
    code = ("import puzzlekit.search.api, puzzlekit as pk, sys; from puzzlekit.search import Problem; "
            "print(callable(pk.search), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]


def _import_graph():
    """Every import (module level or inside a function) between puzzlekit's modules, as a networkx graph;
    the nodes are module names, package ``__init__`` modules flagged."""
    import ast

    import networkx as nx

    root = Path(__file__).resolve().parents[1]
    mods = {}
    for base, pkg in (("puzzlekit", "puzzlekit"), ("solvers", "puzzlekit.solvers"), ("profilers", "puzzlekit.profilers")):
        for f in (root / base).rglob("*.py"):
            parts = [p for p in f.relative_to(root / base).with_suffix("").parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = (f, f.name == "__init__.py")
    g = nx.DiGraph()
    g.add_nodes_from(mods)
    for name, (f, is_pkg) in mods.items():
        here = name if is_pkg else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = here.split(".")[: len(here.split(".")) - (node.level - 1)] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                targets = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            g.add_edges_from((name, t) for t in targets if t in mods and t != name)
    return g, mods


def test_import_graph_keeps_the_data_model_below_its_formats_and_the_cli_on_top():
    """Lazy imports included: the data model (``architecture``, ``blocks``, ``library``, ...) has no import
    cycle and does not import its format (``nas`` registers itself with ``architecture``); only the CLI's
    own modules (and ``__main__``) import ``puzzlekit.cli``; the pipeline package has no cycle."""
    import networkx as nx

    g, mods = _import_graph()
    core = ["puzzlekit." + m for m in ("architecture", "blocks", "library", "nas", "accounting", "rundir", "io",
                                       "errors", "data", "configs")]
    assert [c for c in nx.simple_cycles(g.subgraph(core))] == []
    assert not g.has_edge("puzzlekit.architecture", "puzzlekit.nas")
    up = [(a, b) for a, b in g.edges if b.startswith("puzzlekit.cli") and not a.startswith("puzzlekit.cli")]
    assert up == [("puzzlekit.__main__", "puzzlekit.cli")]
    pipeline = g.subgraph([n for n in g if n.startswith("puzzlekit.pipeline")])
    assert list(nx.simple_cycles(pipeline)) == []
