"""One stage runner for every Puzzle pipeline; the demo, the real-parent run and the LN recipes are presets.

    from puzzlekit import pipeline
    pipeline.run("demo-fast")                                   # every stage of a preset, resumable
    pipeline.run("examples/ln_super/config_tiny.yaml", "search") # one stage (its inputs must be done)
    pipeline.dry_run("ln-super")                                 # what would run; the real-scale plan
    cfg = pipeline.load_config("demo-tiny", {"heal.steps": 4})  # a config to edit, then run(cfg)

CLI: ``puzzlekit run PRESET_OR_CONFIG [--stage NAME|all] [--dry-run] [key=value ...]``
(``puzzlekit demo`` is its alias for the ``demo`` presets).

* :mod:`.config`: :class:`PipelineConfig`, one section per stage; presets are YAML files (:data:`PRESETS`).
* :mod:`.runner`: :class:`Stage` and :class:`Runner` (manifest, skip-if-done, resume, order).
* :mod:`.stages`: one thin function per stage, each a call into the package that owns the work.
* :mod:`.plan`: the dry run's real-scale planning; :mod:`.report`: the comparison report.
See ``docs/ARCHITECTURE.md`` for where a new stage, solver, profiler or engine plugs in.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "run": "puzzlekit.pipeline.api",
    "dry_run": "puzzlekit.pipeline.api",
    "PipelineConfig": "puzzlekit.pipeline.config",
    "load_config": "puzzlekit.pipeline.config",
    "with_overrides": "puzzlekit.pipeline.config",
    "parse_overrides": "puzzlekit.pipeline.config",
    "PRESETS": "puzzlekit.pipeline.config",
    "Stage": "puzzlekit.pipeline.runner",
    "Runner": "puzzlekit.pipeline.runner",
    "Context": "puzzlekit.pipeline.context",
    "STAGES": "puzzlekit.pipeline.stages",
    "STAGE_ORDER": "puzzlekit.pipeline.stages",
    "write_report": "puzzlekit.pipeline.report",
    "render_markdown": "puzzlekit.pipeline.report",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'puzzlekit.pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value
