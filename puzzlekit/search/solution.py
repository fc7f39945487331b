"""What a search returns: our own :class:`Status` and a verified :class:`Solution`.

No raw solver status ever leaves a backend: each maps its native statuses to
:class:`Status` through a table, anything unmapped becoming ``ERROR``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Status", "Choice", "Solution"]


class Status(str, enum.Enum):
    """Outcome of one solve.

    * ``OPTIMAL``: proven optimal (within the requested gap, 0 by default).
    * ``FEASIBLE``: a verified solution, not proven optimal (a time limit
      stopped the solver); :attr:`Solution.gap` says how far it may be.
    * ``INFEASIBLE``: no architecture satisfies the constraints.
    * ``ERROR``: the solver failed, or stopped before it found any solution.
    """

    OPTIMAL = "optimal"
    FEASIBLE = "feasible"
    INFEASIBLE = "infeasible"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value

    @property
    def has_solution(self) -> bool:
        return self in (Status.OPTIMAL, Status.FEASIBLE)


@dataclass(frozen=True)
class Choice:
    """The candidate chosen for parent layers ``first..last``.

    ``key`` is the candidate's label: its block key (``"attn=gqa:2|ffn=ffn:512"``) for a problem built
    from a library.  ``block`` is that block as a :class:`~puzzlekit.BlockConfig`, as everywhere else
    (``Candidate.block``, ``Architecture.blocks``).
    """

    first: int
    last: int
    candidate: int  # index in the library (or the problem when built without one)
    key: str

    @property
    def block(self) -> Any:
        """The chosen block as a :class:`~puzzlekit.BlockConfig` (parsed from :attr:`key`)."""
        from ..blocks import BlockConfig
        from ..errors import ConfigError

        try:
            return BlockConfig.from_key(self.key)
        except ConfigError:
            raise ConfigError(f"candidate {self.candidate} is labelled {self.key!r}, not a block key (its problem was "
                              "not built from a block library); use Choice.key for the label") from None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"layer": self.first, "candidate": self.candidate, "block": self.key}
        if self.last != self.first:
            d["layers"] = [self.first, self.last]
        return d


@dataclass
class Solution:
    """One answer of the search, verified against the original floating-point problem.

    ``objective`` and ``costs`` are recomputed from the chosen candidates, never
    read back from a solver.  ``costs`` are whole-model totals: they include the
    non-block part (embeddings, LM head, ...), which :attr:`constants` lists.
    ``solve_seconds`` covers building the model and solving it.  ``gap`` is
    the relative distance ``|objective - bound| / max(|objective|, 1e-10)``
    (0 for a proven optimum, ``None`` without a solution).
    """

    status: Status
    objective: float | None = None
    costs: dict[str, float] = field(default_factory=dict)
    choices: list[Choice] = field(default_factory=list)
    solver: str = ""
    solve_seconds: float = 0.0
    gap: float | None = None
    bound: float | None = None
    objective_name: str = "objective"
    maximize: bool = False
    message: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    #: the non-block part of each cost in :attr:`costs` (only the nonzero ones)
    constants: dict[str, float] = field(default_factory=dict)

    @property
    def candidates(self) -> list[int]:
        """Chosen candidate indices, in layer order."""
        return [c.candidate for c in self.choices]

    @property
    def blocks(self) -> tuple[Any, ...]:
        """The chosen blocks (:class:`~puzzlekit.BlockConfig`), one per choice, in layer order — the same type
        as ``Architecture.blocks``.  (Before 0.2 this held key strings: use :attr:`block_keys` for those.)"""
        return tuple(c.block for c in self.choices)

    @property
    def block_keys(self) -> list[str]:
        """The chosen candidates' block keys (strings), in layer order."""
        return [c.key for c in self.choices]

    def layer_candidates(self) -> list[int]:
        """For each parent layer, the chosen candidate covering it."""
        out: list[int] = []
        for c in self.choices:
            out.extend([c.candidate] * (c.last - c.first + 1))
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON form the CLI prints (``status``, ``objective``, ``costs``, ``choices``, ...)."""

        def num(v: float | None) -> float | None:
            return None if v is None or not math.isfinite(v) else float(v)

        d: dict[str, Any] = {
            "status": self.status.value,
            "objective": num(self.objective),
            "costs": {k: float(v) for k, v in self.costs.items()},
            "choices": [c.to_dict() for c in self.choices],
            "solver": self.solver,
            "solve_seconds": float(self.solve_seconds),
            "gap": num(self.gap),
        }
        if self.bound is not None:
            d["bound"] = num(self.bound)
        if self.constants:
            d["constants"] = {k: float(v) for k, v in self.constants.items()}
        if self.message:
            d["message"] = self.message
        if self.info:
            d["info"] = _jsonable(self.info)
        return d

    def __repr__(self) -> str:
        obj = "None" if self.objective is None else f"{self.objective:.6g}"
        return (f"Solution(status={self.status.value}, {self.objective_name}={obj}, costs="
                + "{" + ", ".join(f"{k}: {v:.6g}" for k, v in self.costs.items()) + "}"
                + f", solver={self.solver!r}, {self.solve_seconds:.3f}s, gap={self.gap})")


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)
