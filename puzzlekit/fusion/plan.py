"""Fusion plans: which consecutive FFNs to fuse into one wide FFN.

A :class:`FusionPlan` is a plain object: a list of groups, each a tuple of
two or more layers whose FFNs are consecutive inside one attention-free run.
It prints as a table, edits as a list, and saves to / loads from JSON.

:func:`make_plan` chooses groups greedily (agglomerative): every FFN of every
run starts as its own group; the pair of adjacent groups whose merge has the
lowest score (the worst pairwise dependency inside the merged group, from
:mod:`~puzzlekit.fusion.dependency`; 0 without data) is merged, and so on while
the score stays under ``threshold``, or until the runs take ``target_steps``
sequential FFN steps.  ``leave_last=True`` keeps the last FFN of each run out
of every group (FFN Fusion paper: it helped accuracy).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..architecture import Architecture
from ..blocks import AttentionConfig, BlockConfig, FFNConfig
from ..errors import ConfigError
from .dependency import DependencyReport
from .graph import FFNRun, architecture_of, find_ffn_runs

__all__ = ["FusionPlan", "make_plan", "fused_architecture"]

PLAN_SCHEMA_VERSION = 1


@dataclass
class FusionPlan:
    """Groups of consecutive FFN layers to fuse, one wide FFN per group.

    ``groups``: tuples of layer indices (two or more, increasing, all inside one
    FFN run).  ``scores``: optional per-group dependency score (same order).
    ``meta``: how the plan was chosen (criterion, threshold, target, leave_last,
    steps before / after), kept for the record and ignored by :func:`fuse_ffns`.
    """

    groups: list[tuple[int, ...]] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        groups = []
        for k, g in enumerate(self.groups):
            if isinstance(g, (str, bytes)) or not isinstance(g, Iterable):
                raise ConfigError(f"fusion plan group {k} must be a list of layer indices, got {g!r}")
            g = tuple(g)
            if any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in g):
                raise ConfigError(f"fusion plan group {k}: layers must be non-negative integers, got {list(g)}")
            if len(g) < 2:
                raise ConfigError(f"fusion plan group {k}: a group fuses two or more FFNs, got {list(g)}")
            if list(g) != sorted(set(g)):
                raise ConfigError(f"fusion plan group {k}: layers must be strictly increasing, got {list(g)}")
            groups.append(g)
        seen: dict[int, int] = {}
        for k, g in enumerate(groups):
            for x in g:
                if x in seen:
                    raise ConfigError(f"fusion plan: layer {x} is in groups {seen[x]} and {k}; a layer fuses once")
                seen[x] = k
        self.groups = groups
        scores = list(self.scores) if self.scores else [None] * len(groups)
        if len(scores) != len(groups):
            raise ConfigError(f"fusion plan: {len(scores)} scores for {len(groups)} groups; give one per group or none")
        self.scores = [None if s is None else float(s) for s in scores]
        self.meta = dict(self.meta)

    # ---- views ---------------------------------------------------------------------------
    @property
    def num_fused_ffns(self) -> int:
        """FFNs that disappear into a wider one (each group of n saves n - 1 sequential steps)."""
        return sum(len(g) for g in self.groups)

    @property
    def steps_saved(self) -> int:
        return sum(len(g) - 1 for g in self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self):
        return iter(self.groups)

    def validate(self, source: Any) -> list[FFNRun]:
        """Check every group against an architecture (or model); return the runs used.

        Each group must be consecutive active SwiGLU FFNs of one run: no attention
        in between, no linear FFN, nothing skipped.
        """
        arch = architecture_of(source)
        runs = find_ffn_runs(arch)
        where = {}
        for r in runs:
            for pos, layer in enumerate(r.layers):
                where[layer] = (r, pos)
        for k, g in enumerate(self.groups):
            for x in g:
                if x >= arch.num_layers:
                    raise ConfigError(f"fusion plan group {k}: layer {x} does not exist (model has {arch.num_layers} layers)")
                if x not in where:
                    b = arch.blocks[x]
                    why = "its FFN is a no-op" if b.ffn.no_op else "it is not in any run of two or more attention-free FFNs"
                    raise ConfigError(f"fusion plan group {k}: layer {x} cannot be fused: {why}")
            r0, p0 = where[g[0]]
            for off, x in enumerate(g):
                r, p = where[x]
                if r is not r0 or p != p0 + off:
                    raise ConfigError(
                        f"fusion plan group {k} {list(g)}: layers must be consecutive FFNs of one run with no "
                        f"attention between them; runs: {[list(rr.span) for rr in runs]}"
                    )
                if r.kinds[p] != "swiglu":
                    raise ConfigError(f"fusion plan group {k}: layer {x} has a {r.kinds[p]} FFN; only SwiGLU FFNs fuse")
        return runs

    # ---- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": PLAN_SCHEMA_VERSION, "groups": [list(g) for g in self.groups],
                "scores": self.scores, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: Any, source: str = "fusion plan") -> FusionPlan:
        if isinstance(d, list):  # a bare list of groups is accepted too
            d = {"groups": d}
        if not isinstance(d, Mapping) or not isinstance(d.get("groups"), list):
            raise ConfigError(f"{source}: must be an object with a 'groups' list, e.g. {{\"groups\": [[42, 43, 44]]}}")
        v = d.get("schema_version", PLAN_SCHEMA_VERSION)
        if v != PLAN_SCHEMA_VERSION:
            raise ConfigError(f"{source}: schema_version {v!r} is not supported (expected {PLAN_SCHEMA_VERSION})")
        unknown = set(d) - {"schema_version", "groups", "scores", "meta"}
        if unknown:
            raise ConfigError(f"{source}: unknown field {sorted(unknown)[0]!r}; fields: groups, scores, meta")
        try:
            return cls(groups=d["groups"], scores=d.get("scores") or [], meta=d.get("meta") or {})
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)

    def save(self, path: str | os.PathLike) -> None:
        """Write the plan as JSON, atomically."""
        from ..io import atomic_write_json

        atomic_write_json(path, self.to_dict(), indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FusionPlan:
        """Read a plan saved by :meth:`save` (or hand-written JSON)."""
        from ..io import read_json

        return cls.from_dict(read_json(path, what="fusion plan"), source=str(path))

    def __str__(self) -> str:
        if not self.groups:
            return "FusionPlan: nothing to fuse"
        lines = [f"FusionPlan: {len(self.groups)} group(s), {self.num_fused_ffns} FFNs -> "
                 f"{len(self.groups)} wide FFNs ({self.steps_saved} sequential steps saved)"]
        for g, s in zip(self.groups, self.scores):
            score = "" if s is None else f"  dependency {s:.4f}"
            lines.append(f"  layers {g[0]}-{g[-1]} ({len(g)} FFNs: {', '.join(map(str, g))}){score}")
        keys = [k for k in ("criterion", "threshold", "target_steps", "leave_last", "steps_before", "steps_after")
                if k in self.meta]
        if keys:
            lines.append("  " + ", ".join(f"{k}={self.meta[k]}" for k in keys))
        return "\n".join(lines)


def _segments(runs: Sequence[FFNRun], leave_last: bool) -> list[tuple[FFNRun, list[int]]]:
    out = []
    for r in runs:
        for seg in r.fusable_segments():
            seg = list(seg)
            if leave_last and seg and seg[-1] == r.last:
                seg = seg[:-1]
            if len(seg) >= 2:
                out.append((r, seg))
    return out


def make_plan(source: Any, dependency: DependencyReport | None = None, *, threshold: float | None = None,
              target_steps: int | None = None, leave_last: bool = False, max_group: int | None = None,
              runs: Sequence[Any] | None = None) -> FusionPlan:
    """Choose groups to fuse, greedily, under a dependency ``threshold`` or a ``target_steps`` budget.

    * ``source``: an :class:`Architecture` or a model.
    * ``dependency``: a :class:`DependencyReport`; without it every merge scores 0
      (config only: the plan fuses whole runs, or evens them out to meet ``target_steps``).
    * ``threshold``: merge while the merged group's worst pairwise dependency ≤ threshold.
    * ``target_steps``: merge until the considered runs take at most this many sequential
      FFN steps in total (one per group or unfused FFN).  With neither, fuse every run whole.
    * ``leave_last``: keep each run's last FFN unfused.
    * ``max_group``: cap the FFNs per group.
    * ``runs``: restrict to these runs (``FFNRun`` objects, layer tuples or ``(first, last)`` spans).
    """
    arch = architecture_of(source)
    if threshold is not None and target_steps is not None:
        raise ConfigError("make_plan: give a threshold or a target_steps, not both")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold < 0):
        raise ConfigError(f"make_plan: threshold must be a non-negative number, got {threshold!r}")
    for name, v in (("target_steps", target_steps), ("max_group", max_group)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"make_plan: {name} must be a positive integer, got {v!r}")
    all_runs = find_ffn_runs(arch)
    if runs is not None:
        chosen = []
        for want in runs:
            layers = tuple(getattr(want, "layers", want))
            span = (layers[0], layers[-1]) if layers else None
            match = [r for r in all_runs if r.span == span or (len(layers) > 2 and r.layers == layers)]
            if not match:
                raise ConfigError(f"make_plan: {list(layers)} is not an FFN run; runs: {[list(r.span) for r in all_runs]}")
            chosen.append(match[0])
        all_runs = chosen
    segs = _segments(all_runs, leave_last)
    steps_before = sum(len(r) for r in all_runs)

    def score(layers: Sequence[int]) -> float:
        if dependency is None:
            return 0.0
        rd = dependency.for_layers(layers)
        if rd is None:
            raise ConfigError(f"dependency report has no run holding layers {list(layers)}; measure it on this model")
        return rd.group_score(layers)

    # groups per segment, as lists of layers; every FFN starts alone
    groups: list[list[list[int]]] = [[[x] for x in seg] for _, seg in segs]
    steps = steps_before
    while True:
        if target_steps is not None and steps <= target_steps:
            break
        best = None
        for si, gs in enumerate(groups):
            for k in range(len(gs) - 1):
                merged = gs[k] + gs[k + 1]
                if max_group is not None and len(merged) > max_group:
                    continue
                s = score(merged)
                key = (s, len(merged), si, k)  # ties: the smaller merged group first (keeps groups even)
                if best is None or key < best[0]:
                    best = (key, si, k, merged)
        if best is None:
            break
        (s, *_), si, k, merged = best
        if threshold is not None and s > threshold:
            break
        groups[si][k:k + 2] = [merged]
        steps -= 1
    final = [tuple(g) for gs in groups for g in gs if len(g) >= 2]
    final.sort()
    meta: dict[str, Any] = {
        "criterion": "threshold" if threshold is not None else "target_steps" if target_steps is not None else "whole_runs",
        "leave_last": leave_last,
        "steps_before": steps_before,
        "steps_after": steps,
        "runs": [list(r.span) for r in all_runs],
        "scored": dependency is not None,
    }
    if threshold is not None:
        meta["threshold"] = threshold
    if target_steps is not None:
        meta["target_steps"] = target_steps
        if steps > target_steps:
            meta["target_reached"] = False
    if max_group is not None:
        meta["max_group"] = max_group
    return FusionPlan(final, [score(g) if dependency is not None else None for g in final], meta)


def fused_architecture(source: Any, plan: FusionPlan) -> Architecture:
    """The architecture after fusing ``plan`` (no weights needed).

    As in Llama-Nemotron Ultra-253B, the layer count is kept: each group's wide
    FFN (intermediate size = the sum of the group's) sits in the group's last
    layer, whose attention is a no-op; the other layers of the group lose their FFN.
    """
    arch = architecture_of(source)
    plan.validate(arch)
    blocks = list(arch.blocks)
    for g in plan.groups:
        total = sum(blocks[x].ffn.intermediate_size for x in g)
        for x in g[:-1]:
            blocks[x] = BlockConfig(blocks[x].attention, FFNConfig.make_no_op())
        last = blocks[g[-1]]
        if not last.attention.no_op:  # cannot happen for a validated plan: the run has no attention after its first FFN
            raise ConfigError(f"layer {g[-1]} has attention; it cannot hold a fused FFN")
        blocks[g[-1]] = BlockConfig(AttentionConfig.make_no_op(), FFNConfig.swiglu(total))
    return arch.with_blocks(blocks)
