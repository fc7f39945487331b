"""``run`` and ``dry_run``: a pipeline config (a preset name, a YAML file or a
:class:`~puzzlekit.pipeline.config.PipelineConfig`) through the stage runner."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .config import PipelineConfig, load_config
from .context import Context
from .runner import Runner

__all__ = ["run", "dry_run", "set_threads"]


def set_threads(threads: int | str) -> int | None:
    """Apply the config's ``threads``: 0 keeps torch's default; ``auto`` takes up to 2 threads on an idle
    machine and 1 when the cores are busy (a multi-threaded op on cores other jobs hold waits for its
    slowest thread).  Returns the count set (None when unchanged)."""
    import torch

    n = threads
    if n == "auto":
        cores = os.cpu_count() or 1
        try:
            busy = os.getloadavg()[0] / cores > 0.5
        except OSError:
            busy = False
        n = 1 if busy else min(2, cores)
    if not n:
        return None
    torch.set_num_threads(int(n))
    return int(n)


def _runner(config: Any, overrides: dict[str, Any] | None, progress: bool, cache_dir: Any) -> Runner:
    from .stages import STAGES

    cfg = config if isinstance(config, PipelineConfig) and not overrides else load_config(config, overrides)
    return Runner(Context(cfg, progress=progress, cache_dir=cache_dir), STAGES)


def run(config: str | os.PathLike | PipelineConfig, stage: str | Sequence[str] = "all", *,
        overrides: dict[str, Any] | None = None, progress: bool = True,
        cache_dir: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """Run (or resume) ``stage`` of the pipeline (``all``: every configured stage in order; a name; or a
    list) in its run directory; returns each stage's result (``reused`` when it was already complete).

        from puzzlekit import pipeline
        res = pipeline.run("demo-fast", overrides={"output_dir": "runs/demo"})
        res["report"]["report"]["child"]["kl_to_teacher"]
    """
    import torch

    runner = _runner(config, overrides, progress, cache_dir)
    old = torch.get_num_threads()
    try:
        set_threads(runner.cfg.threads)
        return runner.run(stage)
    finally:
        torch.set_num_threads(old)


def dry_run(config: str | os.PathLike | PipelineConfig, *, overrides: dict[str, Any] | None = None,
            plan: bool | None = None) -> dict[str, Any]:
    """What :func:`run` would do, running nothing: per stage its state in the run directory (done / stale /
    running / failed / pending), identity, settings and files.  With ``plan`` (default: when the config
    searches under deployment constraints) also the real-scale plan of :func:`puzzlekit.pipeline.plan.plan`
    (meta-device models, the search, analytic costs; writes ``plan.json``)."""
    runner = _runner(config, overrides, False, None)
    cfg = runner.cfg
    out: dict[str, Any] = {"name": cfg.name, "output_dir": str(runner.ctx.out), "stages": runner.dry_run()}
    if plan is None:
        plan = "search" in cfg.stages and not cfg.search.target_speedup > 0 and bool(cfg.parent.config)
    if plan:
        from .plan import plan as make_plan

        out["plan"] = make_plan(cfg)
    return out
