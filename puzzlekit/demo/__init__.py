"""The end-to-end demo: the whole Puzzle pipeline on a small real model, on this CPU.

``run_demo(out_dir, DEMO_PRESETS["fast"])`` (CLI: ``puzzlekit demo [--fast] [--out DIR] [--data DIR]``)
trains a tiny teacher on Shakespeare, builds the block library (BLD), scores and profiles it,
searches a child at a measured speed-up, heals it and four simple-compression baselines with
the same budget, and writes ``report.json``, ``report.md`` and plots.  See ``docs/demo.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "DemoConfig": "puzzlekit.demo.pipeline",
    "DEMO_PRESETS": "puzzlekit.demo.pipeline",
    "run_demo": "puzzlekit.demo.pipeline",
    "measured_speedup": "puzzlekit.demo.pipeline",
    "write_report": "puzzlekit.demo.report",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'puzzlekit.demo' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value
