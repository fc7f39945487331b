"""FFN Fusion: fuse runs of attention-free FFNs into one wide FFN (arXiv 2503.18908).

::

    from puzzlekit.fusion import find_fusable, fuse_ffns
    plan = find_fusable(model, calib_ids, threshold=0.05, leave_last=True)   # a FusionPlan
    print(plan); plan.save("plan.json")                                      # plain, editable
    fused, changes = fuse_ffns(model, plan)                                  # exact, checked

* :mod:`.graph` — the residual-stream graph (networkx) and its FFN runs;
* :mod:`.dependency` — the pairwise dependency matrix on calibration data;
* :mod:`.plan` — :class:`FusionPlan`, greedy :func:`make_plan`, :func:`fused_architecture`;
* :mod:`.fuse` — :func:`find_fusable`, :func:`fuse_ffns` (needs torch);
* :mod:`.triton_swiglu` — the Triton wide-SwiGLU kernel;
* :mod:`.quality` — KL of fused vs unfused, random-plan baseline.

Names that need torch load on first use, so the config-only parts (graph,
plan) import without it.
"""

from __future__ import annotations

import importlib
from typing import Any

from .dependency import DependencyReport, RunDependency
from .graph import FFNRun, find_ffn_runs, residual_graph
from .plan import FusionPlan, fused_architecture, make_plan

_LAZY = {
    "dependency_matrix": ".dependency",
    "find_fusable": ".fuse",
    "fuse_ffns": ".fuse",
    "FusionResult": ".fuse",
    "FusedGroup": ".fuse",
    "WideSwiGLU": ".fuse",
    "enable_triton_swiglu": ".fuse",
    "plan_kl": ".quality",
    "random_plan": ".quality",
    "compare_with_random": ".quality",
}

__all__ = ["FFNRun", "find_ffn_runs", "residual_graph", "FusionPlan", "make_plan", "fused_architecture",
           "DependencyReport", "RunDependency", *_LAZY]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'puzzlekit.fusion' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value
