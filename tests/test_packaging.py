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
