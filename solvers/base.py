"""The backend protocol: what a MIP solver must offer to puzzlekit.

Call sequence: the search front end builds a :class:`~puzzlekit.search.Problem`
(and reduces it exactly), picks a backend from the registry, checks
:meth:`Backend.is_available` (which imports no native code), then calls
:meth:`Backend.solve` once per problem.  ``solve`` builds its own model from
the problem's arrays, runs the solver, maps the native status to
:class:`~puzzlekit.search.Status` through a table, and returns
``problem.make_solution(...)``, which re-verifies the answer in floating point.
Nothing from the solver's own API leaves the backend's file.
"""

from __future__ import annotations

import abc
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

__all__ = ["Backend", "SolveOptions", "CAPABILITIES"]

#: Capability flags a backend may declare.
CAPABILITIES = frozenset({
    "time_limit",   # honours SolveOptions.time_limit and returns its incumbent
    "mip_gap",      # honours SolveOptions.mip_gap
    "warm_start",   # uses SolveOptions.warm_start
    "threads",      # honours SolveOptions.threads
    "float_exact",  # solves the float problem as given (no integer scaling)
    "bound",        # reports a dual bound (a gap after a time limit)
})


@dataclass(frozen=True)
class SolveOptions:
    """Options every backend understands (those it cannot honour are ignored, see its capabilities).

    ``mip_gap`` is relative; 0 asks for a proven optimum.  ``warm_start``
    holds candidate indices of the problem being solved.  ``extra`` is passed
    to the native solver as it is (names are the solver's own).
    """

    time_limit: float | None = None
    mip_gap: float = 0.0
    threads: int | None = None
    warm_start: np.ndarray | None = None
    verbose: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: what the front end already knows, for backends that can use it (never needed for correctness):
    #: ``lower_bound`` (minimisation form) on the optimum, ``lp_duals`` (one per ``le_rows`` row)
    hints: Mapping[str, Any] = field(default_factory=dict)


class Backend(abc.ABC):
    """A MIP backend: a name, capability flags, the modules it needs, and :meth:`solve`."""

    #: registry name, e.g. ``"highs"``
    name: ClassVar[str] = ""
    #: top-level modules that must be importable (checked without importing them)
    required_modules: ClassVar[tuple[str, ...]] = ()
    #: subset of :data:`CAPABILITIES`
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: what to install when it is missing
    install_hint: ClassVar[str] = ""
    #: one line for ``puzzlekit solvers``
    description: ClassVar[str] = ""
    #: whether the front end should also drop candidates by reduced-cost fixing before calling
    #: :meth:`solve` (dominance pruning is always applied); off for solvers that do it better themselves
    presolve_fixing: ClassVar[bool] = True

    @classmethod
    def is_available(cls) -> bool:
        """True when every required module can be found (nothing is imported)."""
        try:
            return all(importlib.util.find_spec(m) is not None for m in cls.required_modules)
        except (ImportError, ValueError):
            return False

    @abc.abstractmethod
    def solve(self, problem: Any, options: SolveOptions) -> Any:
        """Solve ``problem`` (a :class:`~puzzlekit.search.Problem`); return a verified Solution."""

    def __repr__(self) -> str:
        return f"<solver {self.name}>"


def chosen_from_values(values: Any, n: int) -> np.ndarray:
    """Candidate indices whose binary value is 1 (rounded at 0.5)."""
    v = np.asarray(values, dtype=float)[:n]
    return np.flatnonzero(v > 0.5)
