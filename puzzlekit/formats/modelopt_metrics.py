"""ModelOpt validation metrics: the ``{"<name>": {"avg": x}}`` documents of a puzzle folder, and the values
a metric takes for the teacher by definition."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import LibraryError


def _metrics(raw: Any, path: Path) -> dict[str, float]:
    """Every ``{"<name>": {"avg": x}}`` of a ModelOpt validation result."""
    if not isinstance(raw, Mapping):
        raise LibraryError(f"{path}: expected an object of metric -> {{'avg': number, ...}}")
    out: dict[str, float] = {}
    for k, v in raw.items():
        if isinstance(v, Mapping) and "avg" in v:
            x = v["avg"]
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                raise LibraryError(f"{path}: $.{k}.avg must be a number, got {x!r}")
            out[str(k)] = float(x)
    return out


def _teacher_default(name: str) -> float | None:
    """The value a metric takes for the teacher by definition (distances to it are 0), if any."""
    if name.startswith("kl_div") or name.endswith("_hidden_states") or name == "raw_replacement_loss":
        return 0.0
    if name.endswith("_consistency"):
        return 1.0
    return None
