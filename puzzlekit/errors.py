"""The error types puzzlekit raises.

Every error names the input (a file, an argument, a field), what is wrong with
it, and what to do.  Callers can catch :class:`PuzzlekitError` for all of them;
the CLI turns them into one line on stderr and exit code 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "PuzzlekitError",
    "ConfigError",
    "LibraryError",
    "InfeasibleError",
    "SolverError",
    "SolverUnavailableError",
    "UnsafeInputError",
    "did_you_mean",
]


class PuzzlekitError(ValueError):
    """Base class of every error puzzlekit raises on bad input."""


class ConfigError(PuzzlekitError):
    """A block, architecture, scenario or model config is invalid."""


class LibraryError(PuzzlekitError):
    """A block library document is malformed or inconsistent."""


class InfeasibleError(PuzzlekitError):
    """No architecture satisfies the budgets.

    ``least`` maps each budget name to the least value that budget could reach
    with every other budget free.
    """

    def __init__(self, message: str, least: dict[str, float] | None = None):
        super().__init__(message)
        self.least = dict(least or {})


class SolverError(PuzzlekitError):
    """A solver backend failed or returned something unusable."""


class SolverUnavailableError(SolverError):
    """The requested solver backend is not installed."""


class UnsafeInputError(PuzzlekitError):
    """An input was refused for safety (pickle, path outside a folder, oversized document)."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A hint naming the closest valid names, or listing them all when none is close."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    if not choices:
        return "there are none"
    shown = ", ".join(repr(c) for c in choices[:12])
    more = f" (and {len(choices) - 12} more)" if len(choices) > 12 else ""
    return f"valid names: {shown}{more}"
