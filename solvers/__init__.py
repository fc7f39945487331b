"""MIP solver backends for the puzzlekit search (installed as ``puzzlekit.solvers``).

One file per backend; the registry order is the preference order::

    puzzlekit-exact  exact Lagrangian-pruned DP, HiGHS when it gives up (the default)
    highs          HiGHS through highspy's matrix API
    pyomo-highs    a Pyomo model solved by HiGHS
    ortools-cpsat  OR-Tools CP-SAT on an integer-scaled problem
    ortools-scip   SCIP through OR-Tools' linear solver wrapper

Third-party backends register through the ``puzzlekit.solvers`` entry-point
group (``name = "package.module:BackendClass"``) or :func:`register`.
Importing this package imports no native solver code.
"""

from __future__ import annotations

import importlib
import logging
from importlib import metadata

from ..errors import SolverUnavailableError, did_you_mean
from .base import CAPABILITIES, Backend, SolveOptions

__all__ = [
    "Backend",
    "SolveOptions",
    "CAPABILITIES",
    "register",
    "get_solver",
    "solver_names",
    "available_solvers",
    "solver_table",
    "DEFAULT_SOLVER",
]

log = logging.getLogger(__name__)

DEFAULT_SOLVER = "puzzlekit-exact"

_BUILTIN: dict[str, str] = {
    "puzzlekit-exact": "puzzlekit.solvers.exact:ExactBackend",
    "highs": "puzzlekit.solvers.highs:HighsBackend",
    "pyomo-highs": "puzzlekit.solvers.pyomo_highs:PyomoHighsBackend",
    "ortools-cpsat": "puzzlekit.solvers.ortools_cpsat:CpSatBackend",
    "ortools-scip": "puzzlekit.solvers.ortools_scip:ScipBackend",
}
_REGISTRY: dict[str, str | type[Backend]] = dict(_BUILTIN)
_entry_points_loaded = False


def register(cls: type[Backend], *, name: str | None = None) -> type[Backend]:
    """Register a backend class (usable as a decorator); later registrations come after the built-ins."""
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"{cls!r} is not a puzzlekit.solvers.Backend subclass")
    _REGISTRY[name or cls.name] = cls
    return cls


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    try:
        eps = metadata.entry_points(group="puzzlekit.solvers")
    except Exception:  # pragma: no cover - broken metadata
        return
    for ep in eps:
        if ep.name not in _REGISTRY:
            _REGISTRY[ep.name] = ep.value


def _resolve(name: str) -> type[Backend]:
    ref = _REGISTRY[name]
    if isinstance(ref, str):
        mod, _, attr = ref.partition(":")
        cls = getattr(importlib.import_module(mod), attr)
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise SolverUnavailableError(f"solver {name!r}: {ref} is not a puzzlekit.solvers.Backend")
        _REGISTRY[name] = cls
        return cls
    return ref


def solver_names() -> list[str]:
    """Every registered backend, in preference order."""
    _load_entry_points()
    return list(_REGISTRY)


def _class_if_cheap(name: str) -> type[Backend] | None:
    # Backend modules import no native code at module level, so resolving is cheap.
    try:
        return _resolve(name)
    except Exception as e:  # a broken third-party plug-in must not break the listing
        log.warning("solver %s could not be loaded: %s", name, e)
        return None


def available_solvers() -> list[str]:
    """Registered backends whose modules are installed, in preference order."""
    out = []
    for name in solver_names():
        cls = _class_if_cheap(name)
        if cls is not None and cls.is_available():
            out.append(name)
    return out


def solver_table() -> list[dict]:
    """One row per backend: name, installed, capabilities, description, install hint."""
    rows = []
    for name in solver_names():
        cls = _class_if_cheap(name)
        rows.append({
            "name": name,
            "installed": bool(cls is not None and cls.is_available()),
            "capabilities": sorted(cls.capabilities) if cls else [],
            "description": cls.description if cls else "could not be loaded",
            "install": cls.install_hint if cls else "",
            "default": name == DEFAULT_SOLVER,
        })
    return rows


def get_solver(name: str | None = None) -> Backend:
    """An instance of backend ``name`` (default: :data:`DEFAULT_SOLVER`), checked to be installed."""
    name = name or DEFAULT_SOLVER
    names = solver_names()
    if name not in names:
        raise SolverUnavailableError(f"unknown solver {name!r}; {did_you_mean(name, names)}")
    cls = _resolve(name)
    if not cls.is_available():
        raise SolverUnavailableError(
            f"solver {name!r} is not installed: you need {', '.join(cls.required_modules)}"
            + (f" ({cls.install_hint})" if cls.install_hint else "")
            + f"; installed backends: {', '.join(available_solvers()) or 'none'}"
        )
    return cls()
